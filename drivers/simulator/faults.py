"""Faults the simulated camera can inject, and the `--faults` syntax that names them."""

from __future__ import annotations

from dataclasses import dataclass

ALWAYS = -1  # a count meaning "every reply"
DEFAULT_SLOW_MS = 300


@dataclass(frozen=True)
class Faults:
    """What to break. Counts are replies affected from now on: 0 none, N the next N, ALWAYS all."""

    garbage: bool = False  # random bytes, including fake frame headers, before every reply
    slow_ms: int = 0  # delay before every reply
    bad_crc: int = 0  # replies sent with a wrong CRC
    truncate: int = 0  # replies cut short, the rest never sent
    silence: int = 0  # requests left unanswered
    busy: int = 0  # requests answered BUSY without being executed
    disconnect_after: int | None = None  # serve N requests, then close the pty on the next one
    wrong_identity: bool = False  # the USB serial differs from the reported cSerial
    read_kib_s: int = 0  # the card (an --image volume) reads at most this many KiB/s; 0: full speed

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Parse "garbage,slow=200,bad-crc=2,truncate,silence,busy=1,disconnect-after=5,wrong-identity,
        read-rate=1024".

        A count fault without "=N" applies to every reply; "slow" alone means 300 ms.
        """
        flags: set[str] = set()
        counts: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, has_value, raw = item.partition("=")
            if key in {"garbage", "wrong-identity"}:
                if has_value:
                    raise ValueError(f"fault {key!r} takes no value")
                flags.add(key)
            elif key in {"slow", "bad-crc", "truncate", "silence", "busy", "disconnect-after", "read-rate"}:
                counts[key] = _count(key, raw)
            else:
                raise ValueError(
                    f"unknown fault {key!r}; known: garbage, slow[=MS], bad-crc[=N], truncate[=N], "
                    "silence[=N], busy[=N], disconnect-after=N, wrong-identity, read-rate=KIB_PER_S"
                )
        return cls(
            garbage="garbage" in flags,
            slow_ms=counts.get("slow", 0),
            bad_crc=counts.get("bad-crc", 0),
            truncate=counts.get("truncate", 0),
            silence=counts.get("silence", 0),
            busy=counts.get("busy", 0),
            disconnect_after=counts.get("disconnect-after"),
            wrong_identity="wrong-identity" in flags,
            read_kib_s=counts.get("read-rate", 0),
        )


def _count(key: str, raw: str) -> int:
    if not raw:
        if key == "disconnect-after":
            raise ValueError("fault 'disconnect-after' needs a count: disconnect-after=N")
        if key == "read-rate":
            raise ValueError("fault 'read-rate' needs a rate: read-rate=KIB_PER_S")
        return DEFAULT_SLOW_MS if key == "slow" else ALWAYS
    try:
        number = int(raw)
    except ValueError:
        raise ValueError(f"fault {key!r}: {raw!r} is not a whole number") from None
    if number < 0:
        raise ValueError(f"fault {key!r}: {number} is negative")
    return number
