"""Kafka client properties, checked by the installed librdkafka itself.

The processor's ``kafka:`` section and an agent bundle's producer properties are passed
to librdkafka as they are; a typo there (``bootstrap.server``) or a value it cannot parse
(``session.timeout.ms: abc``) would only surface when the client is made, on the
processor host or on the device. :func:`check_properties` asks librdkafka first:

- its own property table (``rd_kafka_conf_properties_show``): is the name a property, one
  a config may set, for this kind of client? A close name is suggested;
- ``rd_kafka_conf_set`` on a fresh configuration: does it accept the value?
- a throwaway client, made without ``bootstrap.servers`` (so it connects nowhere) and
  in plaintext (so no TLS file or Kerberos command of the device is touched here): does
  the whole set go together (``acks`` with ``enable.idempotence``)?

The first two reach librdkafka through ctypes, in the library confluent-kafka loaded;
where that library cannot be found, the throwaway client alone decides.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import difflib
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, StringConstraints

from sparklem_core.settings.masking import SECRET_NAME_RE


def _kafka_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if not isinstance(value, str | int | float | bool):
        raise ValueError("must be a string, number or boolean")
    return value


#: A property's name and value as a config file or bundle may hold them; librdkafka judges
#: them further (:func:`check_properties`).
KafkaName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9._-]*$")]
KafkaValue = Annotated[Any, AfterValidator(_kafka_value)]

Client = Literal["consumer", "producer"]
_ROLE = {"consumer": "C", "producer": "P"}
_CONF_OK, _CONF_UNKNOWN = 0, -2
# The pointer and callback properties: settable only through librdkafka's C API.
_DEDICATED_API = "see dedicated API"


class KafkaPropertyError(ValueError):
    """A property librdkafka refuses: ``name`` (or "" for the set as a whole) and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}" if name else reason)
        self.name, self.reason = name, reason

    def under(self, where: str) -> str:
        """The one-line message with ``where`` before the name: ``kafka.`` or
        ``kafka property ``."""
        return f"{where}{self.name}: {self.reason}" if self.name else f"{where.strip(' .')}: {self}"


@dataclass(frozen=True)
class Property:
    """One row of librdkafka's property table."""

    name: str
    clients: str  # "C", "P" or "*"
    range: str  # "1 .. 3600000", "plaintext, ssl, ..." or ""
    type: str  # "integer", "enum value", "see dedicated API"...

    @property
    def settable(self) -> bool:
        return self.type != _DEDICATED_API


def check_properties(props: Mapping[str, Any], client: Client) -> None:
    """Raise :class:`KafkaPropertyError` for the first property librdkafka would refuse
    in a ``client`` made with ``props``; never repeats a value."""
    for name, value in props.items():
        text = _text(value)
        if "\0" in text or _unencodable(text):
            raise KafkaPropertyError(name, "must be UTF-8 text without NUL characters")
    if client == "consumer" and not _text(props.get("group.id", "-")).strip():
        # confluent-kafka aborts the process on a blank one (an assertion in C).
        raise KafkaPropertyError("group.id", "must not be blank: the consumer needs a group")
    table = property_table()
    if table is not None:
        for name in props:
            _check_name(name, table, client)
        for name, value in props.items():
            if not _accepted(name, value):
                raise KafkaPropertyError(name, _bad_value(table[name]))
    _throwaway(props, client)


@cache
def property_table() -> dict[str, Property] | None:
    """librdkafka's properties by name (global and topic ones), or None if unreachable."""
    library = _library()
    if library is None:
        return None
    libc = ctypes.CDLL(None)
    libc.fdopen.restype = ctypes.c_void_p
    libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    library.rd_kafka_conf_properties_show.argtypes = [ctypes.c_void_p]
    with tempfile.TemporaryFile() as out:
        stream = libc.fdopen(os.dup(out.fileno()), b"w")
        if not stream:
            return None
        library.rd_kafka_conf_properties_show(stream)
        libc.fclose(stream)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    table = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("|", 5)]
        if len(cells) == 6 and re.fullmatch(r"[a-z][a-zA-Z0-9._]*", cells[0]):
            kind = re.search(r"\*Type: ([^*]+)\*", cells[5])
            table.setdefault(
                cells[0], Property(cells[0], cells[1], cells[2], kind[1] if kind else "")
            )
    return table or None


@cache
def _library() -> ctypes.CDLL | None:
    """The librdkafka confluent-kafka uses (its wheel bundles one), else the system's."""
    import confluent_kafka  # noqa: F401  # loads its librdkafka, which the maps then show

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            loaded = [line.split()[-1] for line in maps if "librdkafka" in line]
    except OSError:
        loaded = []
    path = loaded[0] if loaded else ctypes.util.find_library("rdkafka")
    if path is None:
        return None
    try:
        library = ctypes.CDLL(path)
        library.rd_kafka_conf_new.restype = ctypes.c_void_p
        library.rd_kafka_conf_destroy.argtypes = [ctypes.c_void_p]
        library.rd_kafka_conf_set.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        library.rd_kafka_conf_properties_show.restype = None
    except (OSError, AttributeError):
        return None
    return library


def _check_name(name: str, table: Mapping[str, Property], client: Client) -> None:
    prop = table.get(name)
    if prop is None or not prop.settable:
        close = difflib.get_close_matches(name, [n for n, p in table.items() if p.settable], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        if prop is not None:
            raise KafkaPropertyError(name, "set through librdkafka's C API, not in a config")
        raise KafkaPropertyError(name, f"not a librdkafka property{hint}")
    if prop.clients not in ("*", _ROLE[client]):
        other = "consumer" if prop.clients == "C" else "producer"
        raise KafkaPropertyError(
            name, f"a {other} property; this {client} would ignore it, remove it"
        )


def _text(value: Any) -> str:
    """A value as confluent-kafka hands it to librdkafka."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _accepted(name: str, value: Any) -> bool:
    """Whether librdkafka's ``rd_kafka_conf_set`` takes ``value`` for ``name``."""
    library = _library()
    assert library is not None  # the table came from it
    conf = library.rd_kafka_conf_new()
    try:
        errstr = ctypes.create_string_buffer(512)
        result = library.rd_kafka_conf_set(
            conf,
            name.encode(),
            _text(value).encode("utf-8"),
            errstr,
            len(errstr),
        )
    finally:
        library.rd_kafka_conf_destroy(conf)
    return result in (_CONF_OK, _CONF_UNKNOWN)  # unknown: a topic property, set below


def _bad_value(prop: Property) -> str:
    expected = ", ".join(part for part in (prop.type, prop.range) if part)
    return "librdkafka refuses this value" + (f" (expects {expected})" if expected else "")


def _throwaway(props: Mapping[str, Any], client: Client) -> None:
    # Imported here, not at the top: every command loads the config module, and --help or
    # plugins new need no Kafka client.
    import confluent_kafka
    from confluent_kafka import KafkaException

    conf = {k: v for k, v in props.items() if k != "bootstrap.servers"}
    conf.update({"security.protocol": "plaintext", "log_level": 0})
    if client == "consumer":
        conf.setdefault("group.id", "sparklem-config-check")
    try:
        made = (confluent_kafka.Consumer if client == "consumer" else confluent_kafka.Producer)(
            conf
        )
    except KafkaException as exc:
        raise _refusal(exc.args[0].str(), props) from None
    except Exception as exc:  # confluent-kafka's own keys (logger, on_delivery...)
        raise _refusal(str(exc), props) from None
    if isinstance(made, confluent_kafka.Consumer):
        made.close()


def _refusal(text: str, props: Mapping[str, Any]) -> KafkaPropertyError:
    """librdkafka's complaint about ``props``: by property when it names one."""
    named = re.search(r'property:? "([^"]+)"', text)
    if named and named[1] in props:
        return KafkaPropertyError(named[1], "librdkafka refuses this property or its value")
    for name, value in props.items():  # its text may quote a value: never a secret's
        if SECRET_NAME_RE.search(name) and _text(value):
            text = text.replace(_text(value), "***")
    return KafkaPropertyError("", f"librdkafka refuses this combination: {text.strip()}")
