"""A coverage-guided differential fuzzer for the parser layer (atheris, libFuzzer).

Run it for as long as there is time (it is not part of the suite, which only replays the
seeds through the same check):

    LBPROXY_PURE=1 python -m tests.test_fuzz_atheris -max_total_time=600 -max_len=4096 [CORPUS_DIR]

(atheris follows the coverage of Python bytecode: the compiled build has none to follow.)

Without a corpus directory it starts from the seeds, in a new temporary directory.

Each input is read by both engines, as a request stream or, when its first byte is odd, as the
response to a GET; the first byte also says where to cut it into two reads. No engine may
raise anything but an ``HTTPError``, both must reach the same outcome, and a request stream
may never yield more requests than the strict reference reading of test_fuzz_parser.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from lbproxy.errors import HTTPError
from tests.test_fuzz_parser import reference_requests, requests_of
from tests.test_http_engines import ENGINES, run_request, run_response
from tests.vectors import REQUESTS, RESPONSES, expect, feed


def check(data: bytes) -> None:
    if not data:
        return
    mode, wire = data[0], data[1:]
    cut = (mode >> 1) % (len(wire) + 1)
    reads = [wire[:cut], wire[cut:]] if 0 < cut < len(wire) else [wire]
    if mode & 1:
        steps = (expect(), *(feed(r) for r in reads))
        outcomes = [run_response(engine, steps) for engine in ENGINES]
    else:
        outcomes = [run_request(engine, reads) for engine in ENGINES]
        read = requests_of(outcomes[0])
        assert len(read) <= len(reference_requests(wire)), wire
    for outcome in outcomes:
        assert outcome.error is None or issubclass(outcome.error, HTTPError), outcome
    assert outcomes[0] == outcomes[1], (wire, reads)


def seeds() -> list[bytes]:
    out = [b"\x00" + v.raw for v in REQUESTS]
    for vector in RESPONSES:
        body = b"".join(data for kind, data in vector.steps if kind == "feed")
        out.append(b"\x01" + body)
    return out


def test_the_seeds_pass_the_fuzzer_check() -> None:
    pytest.importorskip("atheris")
    for seed in seeds():
        check(seed)


def main() -> None:
    import atheris

    import lbproxy

    if lbproxy.compiled:
        sys.exit("run the fuzzer on pure Python, with LBPROXY_PURE=1: atheris instruments bytecode")

    # The parser modules are imported already (by the check's own imports), too early for
    # instrument_imports: their loaded code is instrumented instead.
    atheris.instrument_all()
    argv = sys.argv
    if not any(not arg.startswith("-") for arg in argv[1:]):
        # No corpus named: start from the seeds (every vector), not from nothing, so the
        # mutations begin at well-formed messages and reach the framing rules at once.
        corpus = Path(tempfile.mkdtemp(prefix="lbproxy-fuzz-"))
        for number, seed in enumerate(seeds()):
            (corpus / f"seed-{number}").write_bytes(seed)
        argv = [*argv, str(corpus)]
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
