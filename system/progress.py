"""Progress reporting that stays readable in non-interactive logs: a tqdm bar on a terminal, otherwise
a plain line every ~10% (and at the end) with rate and any postfix values."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True) if self.tty else None
        self.count, self.start, self.postfix = 0, time.monotonic(), ""
        self.every = max(1, total // 10)

    def update(self, n: int = 1, **postfix: float) -> None:
        self.count += n
        self.postfix = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(self.postfix, refresh=False)
        elif self.enabled and (self.count % self.every == 0 or self.count == self.total):
            rate = self.count / max(time.monotonic() - self.start, 1e-9)
            print(f"{self.desc}: {self.count}/{self.total} ({rate:.2f}/s) {self.postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    bar = Progress(total, desc, enabled)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
