"""`--translate command:CMD`: any program that reads one text per line on stdin and writes one translation per
line on stdout, in order (a wrapper around another API, a local LLM, `trans -b :en`...). Run without a shell, once
per batch, within a time limit and an output-size limit."""

from __future__ import annotations

import os
import selectors
import shlex
import shutil
import subprocess
import threading
import time

from velora.errors import VeloraError

DEFAULT_TIMEOUT = 600.0  # seconds per batch (--translate_timeout)
OUTPUT_FACTOR = 8  # stdout may be this many times the input's bytes (plus OUTPUT_SLACK) before it is cut off
OUTPUT_SLACK = 2**20
STDERR_TAIL = 2000  # characters of the program's stderr quoted in an error


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):  # the program exited without reading everything: its exit code says why
        pass


def run_bounded(argv: list[str], data: bytes, timeout: float, max_output: int) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, the end of stderr) of `argv` fed `data`; raises TimeoutError or OverflowError (after
    killing it) when it runs over `timeout` seconds or writes more than `max_output` bytes."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
    writer.start()
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        try:
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                for key, _ in selector.select(min(left, 1.0)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    del err[:-4 * STDERR_TAIL]
                    if len(out) > max_output:
                        raise OverflowError
            code = proc.wait(max(deadline - time.monotonic(), 0.1))
        except (TimeoutError, OverflowError, subprocess.TimeoutExpired) as e:
            proc.kill()
            proc.wait()
            raise (OverflowError if isinstance(e, OverflowError) else TimeoutError) from None
        finally:
            proc.stdout.close()
            proc.stderr.close()
    writer.join(1)
    return code, bytes(out), bytes(err)


class CommandBackend:
    batch_size = 256  # lines per run of the program

    def __init__(self, command: str, timeout: float = DEFAULT_TIMEOUT):
        self.command = command.strip()
        self.name = self.identity = f"command:{self.command}"
        self.flag = f"--translate {self.name}"
        try:
            self.argv = shlex.split(self.command)
        except ValueError as e:
            raise VeloraError(f"{self.flag}: cannot split it into a program and arguments ({e})") from None
        if not self.argv:
            raise VeloraError("--translate command: name the program, e.g. --translate 'command:python mt.py'")
        if shutil.which(self.argv[0]) is None:
            raise VeloraError(f"{self.flag}: program {self.argv[0]!r} not found (not on PATH, or not executable)")
        if timeout <= 0:
            raise VeloraError(f"--translate_timeout must be positive, got {timeout}")
        self.timeout = timeout

    def translate(self, texts: list[str]) -> list[str]:
        data = "".join(f"{text}\n" for text in texts).encode("utf-8")
        limit = OUTPUT_FACTOR * len(data) + OUTPUT_SLACK
        try:
            code, out, err = run_bounded(self.argv, data, self.timeout, limit)
        except TimeoutError:
            raise VeloraError(f"{self.flag}: no answer within {self.timeout:g} s for {len(texts)} lines "
                              "(--translate_timeout)") from None
        except OverflowError:
            raise VeloraError(f"{self.flag}: wrote more than {limit:,} bytes for {len(texts)} lines; stopped") from None
        except OSError as e:
            raise VeloraError(f"{self.flag}: cannot run it ({e.strerror})") from None
        tail = " ".join(err.decode("utf-8", "replace").split())[-STDERR_TAIL:]
        if code != 0:
            raise VeloraError(f"{self.flag}: exited with code {code}" + (f": {tail}" if tail else ""))
        try:
            text = out.decode("utf-8")
        except UnicodeDecodeError as e:
            raise VeloraError(f"{self.flag}: its output is not UTF-8 (byte {e.start})") from None
        lines = [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []
        if len(lines) != len(texts):
            raise VeloraError(f"{self.flag}: wrote {len(lines)} lines for {len(texts)} input lines; it must write "
                              "exactly one translation per input line, in order")
        return lines

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass
