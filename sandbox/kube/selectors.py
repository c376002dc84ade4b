"""Label selectors on list and watch (fidelity row "label selectors").

The string syntax of ``labels.Parse`` (``apimachinery/pkg/labels/selector.go``):
equality (``k=v``, ``k==v``, ``k!=v``) and set-based (``k in (a,b)``, ``k notin (a,b)``,
``k``, ``!k``) requirements, comma-separated and ANDed; an unparsable selector is a 400.
``k!=v`` and ``k notin (...)`` also match objects without the label, as upstream.
"""

from __future__ import annotations

import re

from sandbox.kube.resources import ApiError

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_SELECTOR_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


Requirement = tuple[str, str, frozenset[str]]  # (operator, key, values)


def parse_label_selector(text: str) -> list[Requirement]:
    """Kubernetes label selector syntax → requirements (ANDed). Raises 400 when invalid."""
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    reqs: list[Requirement] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            if text.strip():
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {text!r}")
            continue
        if m := _SET_RE.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append((m.group(2), m.group(1), values))
        elif "!=" in part:
            key, _, value = (s.strip() for s in part.partition("!="))
            reqs.append(("!=", key, frozenset({value})))
        elif "=" in part:
            sep = "==" if "==" in part else "="
            key, _, value = (s.strip() for s in part.partition(sep))
            if not key or "=" in value:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
            reqs.append(("=", key, frozenset({value})))
        elif part.startswith("!") and _SELECTOR_KEY.match(part[1:].strip()):
            reqs.append(("!", part[1:].strip(), frozenset()))
        elif _SELECTOR_KEY.match(part):
            reqs.append(("exists", part, frozenset()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return reqs


def selector_matches(reqs: list[Requirement], labels: dict[str, str]) -> bool:
    for op, key, values in reqs:
        value = labels.get(key)
        ok = {
            "in": value in values,
            "=": value in values,
            "notin": value not in values,
            "!=": value not in values,
            "exists": key in labels,
            "!": key not in labels,
        }[op]
        if not ok:
            return False
    return True



FieldRequirement = tuple[str, bool, str]  # (field, equal?, value)
SELECTABLE_FIELDS = ("metadata.name", "metadata.namespace")


def parse_field_selector(text: str) -> list[FieldRequirement]:
    """``fieldSelector``: ``f=v``, ``f==v``, ``f!=v`` on the fields every resource
    supports (``metadata.name``, ``metadata.namespace``; others are a 400, as for a
    custom resource without ``selectableFields``)."""
    reqs: list[FieldRequirement] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "!=" in part:
            field, _, value = part.partition("!=")
            equal = False
        else:
            field, _, value = part.partition("==") if "==" in part else part.partition("=")
            equal = True
        field = field.strip()
        if field not in SELECTABLE_FIELDS:
            raise ApiError(400, "BadRequest",
                           f'"{field}" is not a known field selector: only "metadata.name", '
                           '"metadata.namespace"')
        reqs.append((field, equal, value.strip()))
    return reqs


def fields_match(reqs: list[FieldRequirement], obj: dict[str, object]) -> bool:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    for field, equal, value in reqs:
        have = meta.get(field.split(".", 1)[1]) or ""
        if (have == value) != equal:
            return False
    return True
