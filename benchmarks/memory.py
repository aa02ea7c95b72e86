"""Peak memory of a command and the processes it starts, for the benchmarks that run bondexp as a user does."""

from __future__ import annotations

import threading


class TreeMemory:
    """Peak resident memory of a process and its children, sampled every ``interval`` seconds with psutil.

    ``largest`` is the biggest single process; ``total`` the sum over the tree of resident memory
    (RSS, which counts pages a forked worker shares with its parent in both) and ``total_pss``
    the sum of proportional set sizes (each shared page split between its sharers: the honest total).
    """

    def __init__(self, pid: int, interval: float = 0.25):
        import psutil

        self.root, self.interval = psutil.Process(pid), interval
        self.largest = self.total = self.total_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.interval):
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                infos = [p.memory_full_info() for p in tree]
            except psutil.Error:  # a process ended between listing and reading
                continue
            self.largest = max(self.largest, *(i.rss for i in infos))
            self.total = max(self.total, sum(i.rss for i in infos))
            self.total_pss = max(self.total_pss, sum(getattr(i, "pss", i.rss) for i in infos))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
