"""Config mistakes as one paragraph: the offending key, what is wrong with it, and the fix
(:func:`explain_config_error`, :class:`VitkitArgumentParser`, :func:`weights_mismatch_message`)."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

DEFAULT_HELP_COMMAND = "python tools/train.py"  # the command named in the --help hint when none is set
_TYPE_NAMES = {"<class 'int'>": "an integer", "<class 'float'>": "a number", "<class 'str'>": "a string",
               "<class 'bool'>": "true or false", "<class 'NoneType'>": "null"}


def _class_parameters(class_path: str) -> list[str]:
    """Constructor parameter names of ``class_path`` (for spelling suggestions), or [] when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else [cls]:
        try:  # a class whose __init__ passes **kwargs on takes its parent's parameters too (as jsonargparse resolves)
            params = inspect.signature(klass).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _suggest(key: str, candidates: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the candidate closest to ``key``, or an empty string."""
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: len(key) - len(leaf)]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
    if not close:
        leaves = {c.rsplit(".", 1)[-1]: c for c in candidates if c.startswith(prefix)}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)]
        if close and not close[0].startswith(prefix):
            close = []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_key(message: str, known_keys: list[str], help_hint: str) -> str | None:
    """The paragraph for an unknown key given on the command line or in CONFIG's top level, else None."""
    unknown = re.match(r"unrecognized arguments: (.*)", message.strip(), re.S)
    if unknown:
        keys = [a[2:].split("=", 1)[0] for a in unknown.group(1).split() if a.startswith("--")] or [unknown.group(1)]
        key = keys[0]
        return (f"error: unknown config key '{key}'. Fix: remove it or correct its spelling"
                f"{_suggest(key, known_keys)}; {help_hint}.")
    subcommand = re.search(r"does not accept option '([^']+)'", message)
    if subcommand:
        key = subcommand.group(1)
        return (f"error: unknown config key '{key}'. Fix: remove it from CONFIG or correct its spelling"
                f"{_suggest(key, known_keys)}; {help_hint}.")
    return None


def _expected_type(message: str) -> str | None:
    """What the parser wanted, in words ("an integer or null", "one of 'raise', 'skip'"), or None."""
    subtypes = re.search(r"Subtypes: \[(.*)\]", message)
    expected = re.search(r"Expected a (.*?)(?:\. Got value|$)", message, re.M)
    if subtypes:
        names = [_TYPE_NAMES.get(t.strip(), t.strip()) for t in re.findall(r"<class '[^']+'>|typing\.\w+\[[^]]*\]",
                                                                             subtypes.group(1))]
        want = " or ".join(names) if names else subtypes.group(1)
    elif expected:
        want = _TYPE_NAMES.get(expected.group(1).strip(), expected.group(1).strip())
    else:
        return None
    if lit := re.fullmatch(r"typing\.Literal\[(.*)\]", want):
        want = f"one of {lit.group(1)}"
    return want


def explain_config_error(message: str, known_keys: list[str], prog: str = DEFAULT_HELP_COMMAND) -> str:
    """One paragraph for a jsonargparse error: the offending key, what is wrong with it, and the fix.

    Args:
        message: the parser's error message (nested for class_path arguments).
        known_keys: the parser's dotted keys, for "did you mean" suggestions.
        prog: the training command (``vitkit train``), for the ``--help`` hint.

    Returns:
        The paragraph, starting with ``error:``."""
    help_hint = f"`{prog} CONFIG --help` lists every key with its type"
    if (paragraph := _unknown_key(message, known_keys, help_hint)) is not None:
        return paragraph
    path: list[str] = []
    class_path = None
    for line in message.splitlines():
        line = line.strip()
        if m := re.match(r'Parser key "([^"]+)":', line):
            path.append(m.group(1))
        elif m := re.match(r"Problem with given class_path '([^']+)':", line):
            path.append("init_args")
            class_path = m.group(1)
        elif m := re.match(r"Option '([^']+)' is not accepted", line):
            key = ".".join([*path, m.group(1)])
            params = _class_parameters(class_path) if class_path else []
            candidates = [".".join([*path, p]) for p in params]
            owner = f" ({class_path} has no such argument)" if class_path else ""
            return (f"error: unknown config key '{key}'{owner}. Fix: remove it or correct its spelling"
                    f"{_suggest(key, candidates)}; {help_hint}.")
    if path and path[-1] == "init_args":
        path.pop()
    key = ".".join(path)
    got = re.search(r"(?:Got value|Given value): (.*)", message)
    got_text = f", got {got.group(1).strip()!r}" if got else ""
    want = _expected_type(message)
    if key and want:
        return (f"error: config key '{key}' expects {want}{got_text}. Fix: give {key} a value of that type (in "
                f"CONFIG, or --{key} VALUE on the command line); {help_hint}.")
    detail = " ".join(message.split())
    return f"error: {'config key ' + repr(key) + ': ' if key else ''}{detail}. Fix: {help_hint}."


def weights_mismatch_message(err: RuntimeError, config: str | Path, key: str) -> str | None:
    """The paragraph for ``load_state_dict``'s size/key mismatch, or None for another RuntimeError.

    Args:
        config: the run config that built the model.
        key: the option that named the weights (``--ckpt``, ``--weights``, ``ckpt_path``)."""
    if "Error(s) in loading state_dict" not in str(err):
        return None
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    detail = " ".join(lines[1:3])[:300]
    return (f"{key}: the checkpoint's weights do not fit the model that {config} builds ({detail} ...). Fix: use the "
            "config the checkpoint was trained with (runs/<config>/version_*/config.yaml holds it), or start a new "
            "run")


class VitkitArgumentParser(LightningArgumentParser):
    """Parser whose errors are one paragraph (:func:`explain_config_error`), exit status 2.

    Attributes:
        help_command: the training command named in the ``--help`` hint."""

    help_command: str = DEFAULT_HELP_COMMAND

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print the paragraph on stderr and exit with status 2 (or defer to jsonargparse when it must not exit)."""
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        try:
            known = list(parser.get_defaults().keys())
        except Exception:  # suggestions are a nicety; the message itself must come out
            known = []
        sys.stderr.write(explain_config_error(str(message), known, self.help_command) + "\n")
        self.exit(2)
