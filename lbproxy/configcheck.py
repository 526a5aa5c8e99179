"""Cross-reference rules of a configuration: what may reach what.

Pure: takes a fully typed ``Config`` and returns ``(key path, message)`` problems. Each message
says what is wrong and what exists instead, so an operator can fix it without reading code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from lbproxy.config import HTTP_METHODS, Api, Authorization, Config, IPAddress, LoadBalancer
from lbproxy.configaccess import check_access, egress_family_problems

Problems = list[tuple[str, str]]

_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=:@%-]+$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


def _names(items: Iterable[str]) -> str:
    listed = sorted(items)
    return ", ".join(f"`{n}`" for n in listed) if listed else "none"


def _duplicates(section: str, ids: list[str], what: str) -> Problems:
    seen: dict[str, int] = {}
    problems = []
    for i, ident in enumerate(ids):
        if ident in seen:
            problems.append(
                (
                    f"{section}[{i}].{what}",
                    f"`{ident}` is already used by {section}"
                    f"[{seen[ident]}]; {what}s must be unique",
                )
            )
        seen.setdefault(ident, i)
    return problems


def check(config: Config) -> Problems:
    problems: Problems = []
    problems += _duplicates("vpc", [v.id for v in config.vpcs], "id")
    problems += _duplicates("instance", [i.id for i in config.instances], "id")
    problems += _duplicates("load_balancer", [lb.id for lb in config.load_balancers], "id")
    problems += _duplicates("authorization", [a.name for a in config.authorizations], "name")
    problems += _duplicates("api", [a.name for a in config.apis], "name")
    lb_ids = {lb.id for lb in config.load_balancers}
    for i, inst in enumerate(config.instances):
        if inst.id in lb_ids:
            problems.append(
                (
                    f"instance[{i}].id",
                    f"`{inst.id}` is also a load balancer id; "
                    "an authorization target must name exactly one thing",
                )
            )
    if not config.gateway.listen and not config.gateway.tls:
        problems.append(("gateway.listen", 'needs at least one address, e.g. ["127.0.0.1:8080"]'))
    problems += _check_instances(config)
    for i, lb in enumerate(config.load_balancers):
        problems += _check_load_balancer(config, f"load_balancer[{i}]", lb)
    for i, auth in enumerate(config.authorizations):
        problems += _check_authorization(config, f"authorization[{i}]", auth)
    for i, api in enumerate(config.apis):
        problems += _check_api(config, f"api[{i}]", api)
    problems += _check_route_conflicts(config.apis)
    problems += check_access(config)
    return problems


def _check_vpc_ref(config: Config, key: str, vpc_id: str) -> Problems:
    if config.vpc(vpc_id) is None:
        return [
            (
                key,
                f"vpc `{vpc_id}` does not exist; declared VPCs: "
                f"{_names(v.id for v in config.vpcs)}",
            )
        ]
    return []


def _check_instances(config: Config) -> Problems:
    problems: Problems = []
    for i, inst in enumerate(config.instances):
        vpc = config.vpc(inst.vpc)
        if vpc is None:
            problems += _check_vpc_ref(config, f"instance[{i}].vpc", inst.vpc)
        elif not vpc.contains(inst.ip):
            problems.append(
                (
                    f"instance[{i}].ip",
                    f"{inst.ip} is outside vpc `{vpc.id}`, whose "
                    f"CIDRs are {', '.join(map(str, vpc.cidrs))}",
                )
            )
    return problems


def _check_load_balancer(config: Config, key: str, lb: LoadBalancer) -> Problems:
    vpc = config.vpc(lb.vpc)
    if vpc is None:
        return _check_vpc_ref(config, f"{key}.vpc", lb.vpc)
    problems: Problems = []
    if lb.internal and not vpc.contains(lb.ip):
        problems.append(
            (
                f"{key}.ip",
                f"{lb.ip} is outside vpc `{vpc.id}`, whose CIDRs are "
                f"{', '.join(map(str, vpc.cidrs))}; an internal load balancer has a "
                "private address in its VPC",
            )
        )
    problems += _duplicates(f"{key}.listener", [str(lst.port) for lst in lb.listeners], "port")
    for j, lst in enumerate(lb.listeners):
        for k, server in enumerate(lst.servers):
            skey = f"{key}.listener[{j}].servers[{k}].instance"
            inst = config.instance(server.instance)
            if inst is None:
                in_vpc = (x.id for x in config.instances if x.vpc == lb.vpc)
                problems.append(
                    (
                        skey,
                        f"instance `{server.instance}` does not exist; instances "
                        f"in `{lb.vpc}`: {_names(in_vpc)}",
                    )
                )
            elif inst.vpc != lb.vpc:
                problems.append(
                    (
                        skey,
                        f"instance `{inst.id}` is in `{inst.vpc}`, not "
                        f"`{lb.vpc}`; a load balancer serves only its own VPC",
                    )
                )
    return problems


def _check_authorization(config: Config, key: str, auth: Authorization) -> Problems:
    vpc = config.vpc(auth.vpc)
    if vpc is None:
        problems = _check_vpc_ref(config, f"{key}.vpc", auth.vpc)
        home = _target_vpc(config, auth.target)
        if home is not None:
            key_, message = problems[0]
            problems[0] = (key_, f"{message}; target `{auth.target}` is in `{home}`")
        return problems
    problems = []
    region = config.gateway.region
    if vpc.region != region and vpc.region not in config.gateway.peered_regions:
        problems.append(
            (
                f"{key}.vpc",
                f"vpc `{vpc.id}` is in region `{vpc.region}`, but the gateway is in `{region}`; "
                f"authorize a VPC of `{region}`, or add `{vpc.region}` to "
                "gateway.peered_regions for a cross-region link",
            )
        )
    if auth.host is not None and not _HOST.match(auth.host):
        problems.append((f"{key}.host", f"{auth.host!r} is not a valid Host header value"))
    target_problems = _check_target(config, auth)
    problems += [(f"{key}.{k}", m) for k, m in target_problems]
    if not target_problems:
        for ip in _target_ips(config, auth):
            problems += egress_family_problems(config, f"{key}.target", ip)
    return problems


def _target_vpc(config: Config, target: str) -> str | None:
    """The VPC of the instance or load balancer named ``target``, if there is one."""
    inst = config.instance(target)
    if inst is not None:
        return inst.vpc
    lb = config.load_balancer(target)
    return lb.vpc if lb is not None else None


def _target_ips(config: Config, auth: Authorization) -> list[IPAddress]:
    """The addresses the gateway connects to for a (valid) authorization, each family once."""
    inst = config.instance(auth.target)
    lb = config.load_balancer(auth.target)
    if inst is not None:
        ips = [inst.ip]
    elif lb is not None:
        listener = lb.listener(auth.port)
        servers = listener.servers if listener is not None else ()
        found = (config.instance(s.instance) for s in servers)
        ips = [i.ip for i in found if i is not None]
    else:
        ips = [ipaddress.ip_address(auth.target)]
    first: dict[int, IPAddress] = {}
    for ip in ips:
        first.setdefault(ip.version, ip)
    return list(first.values())


def _check_target(config: Config, auth: Authorization) -> Problems:
    inst = config.instance(auth.target)
    if inst is not None:
        if inst.vpc != auth.vpc:
            return [("target", f"instance `{inst.id}` is in `{inst.vpc}`, not `{auth.vpc}`")]
        return []
    lb = config.load_balancer(auth.target)
    if lb is not None:
        return _check_lb_target(auth, lb)
    try:
        ip = ipaddress.ip_address(auth.target)
    except ValueError:
        in_vpc = [x.id for x in config.instances if x.vpc == auth.vpc]
        in_vpc += [x.id for x in config.load_balancers if x.vpc == auth.vpc]
        return [
            (
                "target",
                f"`{auth.target}` is neither an instance, a load balancer nor an IP "
                f"address; targets in `{auth.vpc}`: {_names(in_vpc)}",
            )
        ]
    vpc = config.vpc(auth.vpc)
    if vpc is not None and not vpc.contains(ip):
        return [
            (
                "target",
                f"{ip} is outside vpc `{vpc.id}`, whose CIDRs are {', '.join(map(str, vpc.cidrs))}",
            )
        ]
    return []


def _check_lb_target(auth: Authorization, lb: LoadBalancer) -> Problems:
    if lb.vpc != auth.vpc:
        return [("target", f"load balancer `{lb.id}` is in `{lb.vpc}`, not `{auth.vpc}`")]
    if not lb.internal:
        host = f"[{lb.ip}]" if lb.ip.version == 6 else str(lb.ip)
        return [
            (
                "target",
                f"load balancer `{lb.id}` is not internal; only internal load balancers may be "
                "VPC targets; reach a public one with an HTTP/HTTPS-type backend: backend = "
                f'{{ type = "http", url = "http://{host}:{auth.port}" }}',
            )
        ]
    if lb.listener(auth.port) is None:
        ports = ", ".join(str(lst.port) for lst in lb.listeners)
        return [
            ("port", f"port {auth.port} is not a listener of `{lb.id}`, which listens on {ports}")
        ]
    return []


def _check_api(config: Config, key: str, api: Api) -> Problems:
    problems: Problems = []
    for j, method in enumerate(api.methods):
        if method not in HTTP_METHODS and method != "ANY":
            problems.append(
                (
                    f"{key}.methods[{j}]",
                    f"{method!r} is not a method; use {', '.join(HTTP_METHODS)} or ANY",
                )
            )
    if not api.methods:
        problems.append((f"{key}.methods", "needs at least one method"))
    path_problem = path_pattern_problem(api.path)
    if path_problem:
        problems.append((f"{key}.path", path_problem))
    name = api.backend.authorization
    if api.backend.is_vpc() and config.authorization(name) is None:
        declared = _names(a.name for a in config.authorizations)
        problems.append(
            (
                f"{key}.backend.authorization",
                f"authorization `{name}` does not exist; declared authorizations: {declared}",
            )
        )
    return problems


def path_pattern_problem(path: str) -> str | None:
    """Why ``path`` is not a valid API path pattern, or None when it is."""
    hint = "use /exact, /prefix/* or /items/{id}"
    if not path.startswith("/"):
        return f"{path!r} must start with '/'; {hint}"
    segments = path[1:].split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "*" and last and "{" not in path:
            continue
        if seg == "" and last:
            continue
        if seg.lower().replace("%2e", ".") in (".", ".."):
            return (
                f"dot segment {seg!r} in {path!r} can never match (requests with dot "
                "segments are refused); write the path without it"
            )
        if not (_PARAM.match(seg) or _SEGMENT.match(seg)):
            return f"segment {seg!r} of {path!r} is not valid; {hint}"
    return None


def _check_route_conflicts(apis: tuple[Api, ...]) -> Problems:
    owner: dict[tuple[str, str], int] = {}
    problems: Problems = []
    for i, api in enumerate(apis):
        shape = re.sub(r"\{[^}]*\}", "{}", api.path)
        for method in api.methods:
            for m in HTTP_METHODS if method == "ANY" else (method,):
                first = owner.setdefault((m, shape), i)
                if first != i:
                    problems.append(
                        (
                            f"api[{i}].path",
                            f"{m} {api.path} is already routed by "
                            f"api[{first}] (`{apis[first].name}`)",
                        )
                    )
                    break
    return problems
