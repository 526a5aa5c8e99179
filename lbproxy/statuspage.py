"""The ``/status.html`` page: a ``status.snapshot`` document as one self-contained HTML page.

Pure: a document in, a string out. Every value from the document is escaped, attribute or
text. The page has no external assets. It refreshes itself: every 2 s its script fetches
``/status.html`` again and swaps the ``#status`` part in, so the page has one renderer, this
one, and nothing from the JSON reaches the DOM without going through its escaping; without
JavaScript a ``<noscript>`` meta refresh reloads it every 5 s. A failed refresh keeps the last
state and says so in a red banner.

Rows carry ``data-server``, ``data-phase`` and ``data-drained`` and their cells a class per
column, for the page's style and for tests (the browser test reads them).
"""

from __future__ import annotations

import html
import time
from typing import Any

Json = dict[str, Any]

# Phases that take a server out of rotation: red rows. Half-open (trying again) is amber.
_OUT = frozenset({"down", "ejected"})

_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<title>lbproxy status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.facts, .note { color: #555; } .summary { font-weight: bold; margin: .6em 0; }
.summary.bad, .alarm, #stale { color: #fff; background: #c62828; padding: .3em .6em; }
.summary.good { color: #1b5e20; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.name, td.address, td.until { white-space: nowrap; }
tr.out td { background: #ffcdd2; } tr.out td.phase { color: #b71c1c; font-weight: bold; }
tr.half_open td { background: #fff3cd; } tr.drained td { background: #eceff1; color: #666; }
.ok { color: #2e7d32; } .fail { color: #c62828; font-weight: bold; }
</style></head>
<body data-refreshes="0">
<h1>lbproxy status</h1>
<p id="stale" hidden></p>
"""

_SCRIPT = """<script>
(function () {
  "use strict";
  var refreshes = 0;
  function refresh() {
    fetch("/status.html", {cache: "no-store"}).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    }).then(function (text) {
      var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("status");
      if (fresh === null) { throw new Error("no status in the answer"); }
      document.getElementById("status").replaceWith(document.adoptNode(fresh));
      refreshes += 1;
      document.body.setAttribute("data-refreshes", String(refreshes));
      document.getElementById("stale").hidden = true;
    }).catch(function (error) {
      var stale = document.getElementById("stale");
      stale.textContent = "Refresh failed (" + error.message + "); showing the last state.";
      stale.hidden = false;
    });
  }
  setInterval(refresh, 2000);
}());
</script>
</body></html>
"""

_COLUMNS = (
    "server",
    "address",
    "state",
    "why",
    "weight",
    "slow start",
    "in flight",
    "pool (active/idle/opening/waiting)",
    "last checks",
    "ejected until",
)
# The class of each column's cells.
_CELLS = ("name", "address", "phase", "why", "weight", "share", "flight", "pool", "checks", "until")

_ALARMS = {
    "fail_open": "Fail open: every server that is not drained is down or ejected; requests try "
    "them all anyway.",
    "drained": "Every server is drained: new requests get 503 until one is enabled.",
}


def render_page(document: Json) -> str:
    """The ``/status.html`` page of a ``snapshot``; every value is escaped."""
    gateway = document["gateway"]
    listeners = [lst for lb in document["load_balancers"] for lst in lb["listeners"]]
    worker = f"pid {gateway['pid']}"
    if gateway["workers"] > 1:
        worker += f" (one of {gateway['workers']} workers: this is its view)"
    facts = (
        f"lbproxy {_e(gateway['version'])} · {_e(worker)} · "
        f"up {_e(_duration(gateway['uptime']))} · at {_e(_clock(gateway['time']))} UTC"
    )
    sections = "".join(_section(lst) for lst in listeners)
    return (
        f'{_HEAD}<div id="status">\n<p class="facts">{facts}</p>\n'
        f"{_summary(listeners)}{sections}</div>\n{_SCRIPT}"
    )


def _summary(listeners: list[Json]) -> str:
    servers = [(lst["name"], s) for lst in listeners for s in lst["servers"]]
    out = [(name, s) for name, s in servers if s["phase"] in _OUT]
    drained = [f"{s['name']} on {name}" for name, s in servers if s["drained"]]
    if out:
        items = "".join(
            f"<li>{_e(s['name'])} on {_e(name)}: {_e(s['phase'])}"
            f"{'' if s['why'] is None else ', ' + _e(s['why']['reason'])}</li>\n"
            for name, s in out
        )
        text = f'<p class="summary bad">{len(out)} of {len(servers)} servers out</p>\n'
        text += f'<ul class="out">\n{items}</ul>\n'
    else:
        text = f'<p class="summary good">All {len(servers)} servers up.</p>\n'
    if drained:
        text += f'<p class="summary note">Drained: {_e(", ".join(drained))}</p>\n'
    return text


def _section(listener: Json) -> str:
    check = listener["health_check"]
    if check is None:
        checks = "no active checks"
    else:
        checks = f"{check['type']} checks {check['path'] or ''} every {check['interval']:g} s"
    title = f"{listener['name']} · {listener['address']} · {listener['scheduler']} · {checks}"
    alarm = _ALARMS.get(listener["availability"])
    warning = "" if alarm is None else f'<p class="alarm">{_e(alarm)}</p>\n'
    if listener["availability"] == "backup":
        warning = '<p class="note">Every primary server is out or drained: backups serve.</p>\n'
    head = "".join(f"<th>{_e(c)}</th>" for c in _COLUMNS)
    rows = "".join(_row(s) for s in listener["servers"])
    return (
        f'<section data-listener="{_e(listener["name"])}" '
        f'data-availability="{_e(listener["availability"])}">\n<h2>{_e(title)}</h2>\n{warning}'
        f"<table>\n<tr>{head}</tr>\n{rows}</table>\n</section>\n"
    )


def _row(server: Json) -> str:
    phase = server["phase"]
    state = phase.replace("_", "-")
    if server["drained"]:
        state += ", drained"
    if server["backup"]:
        state += ", backup"
    if phase in _OUT:
        kind = "out"
    elif phase == "half_open":
        kind = "half_open"
    else:
        kind = "drained" if server["drained"] else ""
    why = server["why"]
    weight = server["weight"]
    weight_text = str(weight["current"])
    if weight["current"] != weight["configured"]:
        weight_text += f" (configured {weight['configured']})"
    ramp = server["slow_start"]
    ramp_text = f"{ramp['share']}%"
    if ramp["until"] is not None:
        ramp_text += f" until {_clock(ramp['until'])}"
    pool = server["pool"]
    pool_text = f"{pool['active']}/{pool['idle']}/{pool['opening']}/{pool['waiting']}"
    ejected = server["ejected_until"]
    cells = (
        _e(server["name"]),
        _e(server["address"]),
        _e(state),
        "" if why is None else f"{_e(why['reason'])} <small>({_e(_clock(why['at']))})</small>",
        _e(weight_text),
        _e(ramp_text),
        _e(server["in_flight"]),
        _e(pool_text),
        "".join(_check(c) for c in server["checks"]),
        "" if ejected is None else _e(_clock(ejected)),
    )
    tds = "".join(f'<td class="{c}">{cell}</td>' for c, cell in zip(_CELLS, cells, strict=True))
    return (
        f'<tr class="{kind}" data-server="{_e(server["name"])}" data-phase="{_e(phase)}" '
        f'data-drained="{str(server["drained"]).lower()}">{tds}</tr>\n'
    )


def _check(check: Json) -> str:
    mark, kind = ("✓", "ok") if check["ok"] else ("✗", "fail")
    title = f"{_clock(check['at'])}: {check['reason']}"
    return f'<span class="{kind}" title="{_e(title)}">{mark}</span>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"
