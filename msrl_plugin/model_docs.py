"""What ``msrl-plugin list-models`` prints: each aggregator's summary line and its parameters with their
defaults (from the ``__init__`` signature) and descriptions (from numpydoc ``Parameters`` sections of the
class docstrings, searched along the class hierarchy), as plain text without reStructuredText markup."""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")  # :class:`~a.b.C` -> a.b.C (then the last part)
_LITERAL = re.compile(r"``([^`]+)``")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])")
_PARAM_LINE = re.compile(r"^(?P<names>\w+(?:\s*,\s*\w+)*)\s*(?::.*)?$")


def plain_text(text: str) -> str:
    """reStructuredText inline markup removed: roles, ``literals``, *emphasis*, and whitespace runs."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = _LITERAL.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    return " ".join(text.split())


def summary_line(cls: type) -> str:
    """The first line of a class's docstring, in plain text."""
    doc = inspect.getdoc(cls) or ""
    return plain_text(doc.strip().split("\n\n", 1)[0].splitlines()[0]) if doc.strip() else ""


def documented_parameters(doc: str) -> dict[str, tuple[str, str]]:
    """``name -> (group, first sentence)`` from the numpydoc ``Parameters`` section and from every section titled
    ``<Group> parameters`` (``a, b : type`` share one entry; the plain section's group is ``""``)."""
    lines = inspect.cleandoc(doc or "").splitlines() + [""]

    def is_header(i: int) -> bool:
        return i + 1 < len(lines) and lines[i].strip() != "" and set(lines[i + 1].strip()) == {"-"}

    out: dict[str, tuple[str, str]] = {}
    for i in range(len(lines)):
        title = lines[i].strip()
        if is_header(i) and (title == "Parameters" or title.endswith(" parameters")):
            group = "" if title == "Parameters" else title.removesuffix(" parameters")
            _read_section(lines, i + 2, group, is_header, out)
    return out


def _read_section(lines: list[str], start: int, group: str, is_header, out: dict) -> None:
    names: list[str] = []
    text: list[str] = []
    for i in range(start, len(lines)):
        entry = lines[i]
        if entry and not entry[0].isspace():  # a new entry, or the next section
            _store(out, group, names, text)
            match = _PARAM_LINE.match(entry.strip())
            if is_header(i) or match is None:
                return
            names, text = [n.strip() for n in match["names"].split(",")], []
        elif entry.strip():
            text.append(entry.strip())
    _store(out, group, names, text)


def _store(out: dict, group: str, names: list[str], text: list[str]) -> None:
    sentence = plain_text(" ".join(text))
    sentence = re.split(r"(?<=\.)\s", sentence, maxsplit=1)[0].rstrip(".")
    for name in names:
        out.setdefault(name, (group, sentence))


@dataclass
class ParameterDoc:
    name: str
    default: str
    description: str
    group: str = ""
    tag: str = ""


def parameter_docs(cls: type) -> list[ParameterDoc]:
    """Every ``__init__`` parameter of ``cls`` in signature order, with its default, description, group (the
    docstring section that documents it) and the provenance tag of its default (``cls.default_tags``)."""
    described: dict[str, tuple[str, str]] = {}
    for klass in cls.__mro__:  # a subclass's description wins over its base's
        for name, entry in documented_parameters(klass.__dict__.get("__doc__") or "").items():
            described.setdefault(name, entry)
    tags = getattr(cls, "default_tags", None) or {}
    docs = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = "(required)" if p.default is p.empty else repr(p.default)
        group, text = described.get(p.name, ("", ""))
        docs.append(ParameterDoc(p.name, default, text, group, f"[{tags[p.name]}]" if p.name in tags else ""))
    return docs


def format_parameters(name: str, cls: type) -> str:
    """An aligned ``parameter  default  description`` table under the model's summary line, one block per group
    (``Training`` for the parameters of no group) when the model's docstring groups them."""
    docs = parameter_docs(cls)
    width_name = max([len("parameter")] + [len(d.name) for d in docs])
    width_default = max([len("default")] + [len(d.default) + len(d.tag) + 1 for d in docs])
    groups = list(dict.fromkeys(d.group for d in docs))
    lines = [f"{name}: {summary_line(cls)}"]
    if any(d.tag for d in docs):
        lines.append("tags: [P] paper, [S] SUBLIME, [B] baseline repos, [D] a default of this project")
    for group in sorted(groups, key=lambda g: (g == "Scaling", g == "")):  # training, then scaling, last
        if len(groups) > 1:
            lines += ["", f"{group or 'Training'} parameters:"]
        else:
            lines.append("")
        lines.append(f"{'parameter':<{width_name}}  {'default':<{width_default}}  description")
        lines += [f"{d.name:<{width_name}}  {(d.default + ' ' + d.tag).strip():<{width_default}}  "
                  f"{d.description or '-'}".rstrip() for d in docs if d.group == group]
    lines += ["", f"set one with --param KEY=VALUE (train, pretrain) or --param {name}.KEY=VALUE (compare)"]
    return "\n".join(lines)
