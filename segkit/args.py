"""The one grammar of every ``segkit`` command: Hydra-style ``key=value`` arguments.

``segkit COMMAND key=value ...``. Values are read by Hydra's own override parser
(``3``, ``-1``, ``0.25``, ``1e-3``, ``true``, ``null``, ``[1,2,3]``, ``'quoted text'``)
and checked against the key's type as OmegaConf checks a typed field (so ``tta=yes``
and ``sw_batch_size='4'`` are accepted, ``overlap=abc`` is not). A string key keeps its
text as written (``output=2025-01-31``, ``ckpt=a.ckpt,b.ckpt``), unquoted when it is
quoted. ``--key value`` and ``--key=value`` mean ``key=value``; ``--key`` alone sets a
boolean key (``--json`` is ``json=true``); a key may have a short alias (``-m``), and a
command may name keys filled by bare words (``segkit sweep-report DIR``; a list key
takes all the remaining ones, ``segkit select A B``). Commands
that compose ``conf/train.yaml`` (``plan``, ``configure``) hand every other argument
to Hydra as an override. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from segkit.errors import ConfigError

REQUIRED = "(required)"
GRAMMAR = (
    "Values use Hydra's override grammar: 3, -1, 0.25, 1e-3, true, null, [1,2,3], "
    "'quoted text'; --KEY VALUE is KEY=VALUE, --FLAG is FLAG=true."
)


@dataclass(frozen=True)
class Key:
    """One ``key=value`` argument of a command.

    Attributes:
        name: The key (``sw_batch_size``); ``--sw-batch-size`` is the same key.
        help: One line saying what it means.
        type: ``str``, ``int``, ``float``, ``bool`` or ``list``.
        required: The command fails without it.
        nullable: ``key=null`` is allowed (passes None).
        alias: A short flag for a boolean key (``-m``).
        default: Shown by ``--help``; None means "read it from `Command.defaults`"
            (the function the command calls owns its defaults).
        override: Hydra-config commands: the config key this short form stands for
            (``plans=X`` is the override ``planner.plans=X``).
    """

    name: str
    help: str
    type: type = str
    required: bool = False
    nullable: bool = False
    alias: str | None = None
    default: Any = None
    override: str | None = None


@dataclass(frozen=True)
class Arguments:
    """A parsed command line: the command's own keys, and Hydra overrides."""

    values: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Command:
    """A ``segkit`` subcommand: its keys, its help and what runs it.

    Attributes:
        name: ``plan``, ``predict``, ...
        summary: One line for ``segkit --help``.
        description: Examples and details for ``segkit NAME --help``.
        keys: Its ``key=value`` arguments.
        run: Called with the parsed `Arguments`; returns the exit code.
        positional: Keys that bare words (no ``=``) fill, in order.
        hydra: Other ``key=value`` arguments are Hydra overrides of ``conf/train.yaml``.
        defaults: Returns the defaults of keys without a `Key.default`, read from
            the function the command calls (imported only for ``--help``).
        epilog: Returns extra help text (the config groups of a Hydra command).
    """

    name: str
    summary: str
    description: str
    keys: tuple[Key, ...]
    run: Callable[[Arguments], int]
    positional: tuple[str, ...] = ()
    hydra: bool = False
    defaults: Callable[[], Mapping[str, Any]] | None = None
    epilog: Callable[[], str] | None = None

    def key(self, name: str) -> Key | None:
        """The key called ``name`` (dashes read as underscores), or None."""
        name = name.replace("-", "_")
        return next((k for k in self.keys if k.name == name), None)

    def allowed(self) -> str:
        return ", ".join(k.name for k in self.keys)


def _hydra_value(key: str, text: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(f"{key}={text}")
    except HydraException as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{key}={text}: not a value of Hydra's override grammar ({first}); quote it, "
            f"e.g. '{key}=\"{text}\"'"
        ) from None
    value = override.value()
    if override.is_sweep_override():
        elements = getattr(value, "list", None)
        if elements is None:
            raise ConfigError(f"{key}={text}: a sweep is not a value here")
        return list(elements)
    return value


def _kind(type_: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", list: "a list"}.get(
        type_, "a string"
    )


def convert(key: Key, text: str) -> Any:
    """The value of ``key=text`` as ``key.type``.

    Raises:
        ConfigError: ``text`` is not in Hydra's grammar or not of the key's type.
    """
    quoted = len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]
    if key.type is str and not quoted and not (key.nullable and text == "null"):
        return text  # paths and names as written: a,b or 2025-01-31 stay text
    value = _hydra_value(key.name, text)
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f"{key.name}: got null; expected {_kind(key.type)}")
    if key.type is str:
        return str(value)
    if key.type is list:
        return list(value) if isinstance(value, list) else [value]
    from omegaconf import BooleanNode, FloatNode, IntegerNode
    from omegaconf.errors import ValidationError

    node = {bool: BooleanNode, int: IntegerNode, float: FloatNode}[key.type]
    try:
        return node(value)._value()
    except ValidationError:
        raise ConfigError(f"{key.name}: got {text!r}; expected {_kind(key.type)}") from None


def _unknown(command: Command, what: str) -> ConfigError:
    extra = " (any other key=value is a Hydra override of conf/train.yaml)" if command.hydra else ""
    return ConfigError(f"unknown {what}; allowed keys: {command.allowed()}{extra}")


def parse(command: Command, argv: Sequence[str]) -> Arguments:
    """Reads ``argv`` (the words after the command's name) in segkit's grammar.

    Raises:
        ConfigError: An unknown key or flag (naming it and listing the allowed
            keys), a value of the wrong type, or a missing required key.
    """
    out = Arguments()
    words = list(argv)
    positional = list(command.positional)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("-"):
            name, sep, text = word[2:].partition("=")
            key = next((k for k in command.keys if k.alias == word), None)
            if key is None and word.startswith("--"):
                key = command.key(name)
            if key is None:
                raise _unknown(command, f"flag {word!r}")
            if not sep:
                if key.type is bool:
                    text = "true"
                elif i < len(words):
                    text, i = words[i], i + 1
                else:
                    raise ConfigError(f"{word} needs a value: {word} VALUE or {key.name}=VALUE")
            _store(out, key, text)
            continue
        name, sep, text = word.partition("=")
        key = command.key(name) if sep else None
        if key is None and not sep and positional:
            key, text = command.key(positional[0]), word
            if key.type is list:  # a list key takes every remaining bare word, as written
                out.values.setdefault(key.name, []).append(word)
                continue
        if key is None:
            if command.hydra:
                out.overrides.append(word)  # Hydra names what is wrong with it
                continue
            what = f"key {name!r}" if sep and name else f"argument {word!r} (not key=value)"
            raise _unknown(command, what)
        if key.name in positional:
            positional.remove(key.name)
        _store(out, key, text)
    missing = [k.name for k in command.keys if k.required and k.name not in out.values]
    if missing:
        raise ConfigError(
            f"missing {', '.join(f'{k}=...' for k in missing)}; see segkit {command.name} --help"
        )
    return out


def _store(out: Arguments, key: Key, text: str) -> None:
    out.values[key.name] = convert(key, text)
    if key.override:  # checked like any key; Hydra gets the text as written
        out.overrides.append(f"{key.override}={text}")


def show(value: Any) -> str:
    """``value`` written in Hydra's grammar (``null``, ``true``, ``[1,2]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def help_text(command: Command) -> str:
    """``segkit NAME --help``: usage, description, every key with default and meaning."""
    import textwrap

    defaults = dict(command.defaults()) if command.defaults else {}
    rows = []
    for k in command.keys:
        name = f"{k.name}=" + (f" ({k.alias})" if k.alias else "")
        if k.required:
            default = REQUIRED
        else:
            default = show(k.default if k.default is not None else defaults.get(k.name))
        rows.append((name, default, k.help))
    width = max((len(r[0]) for r in rows), default=0)
    dwidth = max((len(r[1]) for r in rows), default=0)
    indent = " " * (width + dwidth + 6)
    bare = " ".join(p.upper() for p in command.positional)
    usage = f"usage: segkit {command.name} {bare + ' ' if bare else ''}[key=value ...]"
    if command.hydra:
        usage += " [Hydra overrides of conf/train.yaml]"
    lines = [usage, "", command.description.rstrip(), "", "keys (key=value, default, meaning):"]
    for n, d, h in rows:
        lines += textwrap.wrap(f"  {n:<{width}}  {d:<{dwidth}}  {h}", 100, subsequent_indent=indent)
    lines += ["", *textwrap.wrap(GRAMMAR, 100)]
    if command.epilog:
        lines += ["", command.epilog().rstrip()]
    return "\n".join(lines) + "\n"


def signature_defaults(func: Callable[..., Any], **rename: str) -> dict[str, Any]:
    """Defaults of ``func``'s keyword parameters, keyed by CLI key (``rename``: key=param)."""
    import inspect

    params = inspect.signature(func).parameters
    out = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    for key, param in rename.items():
        if param in out:
            out[key] = out.pop(param)
    return out
