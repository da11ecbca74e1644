"""Python action sources used by the fabric tests (plain code actions)."""

ECHO = """
import os, sys

def main(params):
    print("echo stdout", sorted(params))
    print("echo stderr", file=sys.stderr)
    return {
        "params": params,
        "activation_id": os.environ.get("__OW_ACTIVATION_ID"),
        "action_name": os.environ.get("__OW_ACTION_NAME"),
        "namespace": os.environ.get("__OW_NAMESPACE"),
        "deadline": os.environ.get("__OW_DEADLINE"),
        "api_host": os.environ.get("__OW_API_HOST"),
        "api_key": os.environ.get("__OW_API_KEY"),
        "pid": os.getpid(),
        # Unique per worker (its pid may be 2 in every worker: each has its own PID namespace).
        "worker": os.environ.get("TMPDIR"),
    }
"""

SLEEP = """
import os, time

def main(params):
    time.sleep(float(params.get("seconds", 0.5)))
    return {"slept": params.get("seconds", 0.5), "worker": os.environ.get("TMPDIR")}
"""

APP_ERROR = """
def main(params):
    return {"error": params.get("message", "refused by the action")}
"""

RAISES = """
def main(params):
    raise ValueError("boom")
"""

NOT_A_DICT = """
def main(params):
    return [1, 2, 3]
"""

EXITS = """
import os

def main(params):
    print("about to die", flush=True)
    os._exit(9)
"""

BIG_RESULT = """
def main(params):
    return {"blob": "x" * int(params["size"])}
"""

HOG = """
import time

def main(params):
    hog = b"\\x01" * (int(params.get("mb", 400)) * 1024 * 1024)
    time.sleep(float(params.get("hold", 3)))
    return {"held": len(hog)}
"""

CHATTY = """
def main(params):
    line = "y" * 1000
    for _ in range(int(params.get("lines", 10))):
        print(line)
    return {"ok": True}
"""

# Leaves a world-readable file in /tmp and /dev/shm, then lists both (as another tenant would).
LITTER = """
import os

def main(params):
    for folder in ("/tmp", "/dev/shm"):
        path = os.path.join(folder, params["file"])
        with open(path, "w") as handle:
            handle.write("left here")
        os.chmod(path, 0o644)
    return {"tmp": sorted(os.listdir("/tmp")), "shm": sorted(os.listdir("/dev/shm"))}
"""

BAD_SYNTAX = """
def main(params)
    return {}
"""

# Looks everywhere an action could find another tenant's secrets: every visible process's
# cmdline, environ and writable memory, and the files under ``roots``. The secrets arrive reversed,
# so the fabric's copy of this request never matches; the attacker's own process is skipped.
SNOOP = """
import os, time

def main(params):
    secrets = [s[::-1].encode() for s in params["reversed"]]
    deadline = time.monotonic() + float(params.get("budget_s", 60))
    me = str(os.getpid())
    found, pids = {}, []

    def look(data, where):
        for secret in secrets:
            if secret in data:
                found.setdefault(secret.decode(), []).append(where)

    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == me:
            continue
        pids.append(entry)
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as handle:
                    look(handle.read(), f"/proc/{entry}/{part}")
            except OSError:
                pass
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if b"python" not in handle.read():
                    continue
            with open(f"/proc/{entry}/maps") as handle:
                maps = handle.read().splitlines()
            mem = open(f"/proc/{entry}/mem", "rb")
        except OSError:
            continue
        with mem:
            for line in maps:
                fields = line.split()
                if fields[1] != "rw-p" or (len(fields) > 5 and not fields[5].startswith("[heap")):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if end - start > 512 << 20 or time.monotonic() > deadline:
                    continue
                try:
                    mem.seek(start)
                    look(mem.read(end - start), f"/proc/{entry}/mem")
                except (OSError, ValueError, OverflowError):
                    pass
    readable, unfinished = 0, []
    for root in params["roots"]:  # secrets live in small files: the first MB of each is enough
        for folder, _, files in os.walk(root):
            if time.monotonic() > deadline:
                unfinished.append(root)
                break
            for name in files:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as handle:
                        look(handle.read(1 << 20), path)
                        readable += 1
                except OSError:
                    pass
    return {"found": found, "pids": len(pids), "readable_files": readable, "unfinished": unfinished}
"""

# Starts a grandchild that escapes its parent (fork, setsid, fork) and holds ``mb`` MB for
# minutes, with ``marker`` on its command line so the test finds it in the process table.
ESCAPE = """
import os, sys, time

HOG = "import sys, time; hog = b'x' * (int(sys.argv[2]) << 20); time.sleep(600)"

def main(params):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", HOG, params["marker"], str(params.get("mb", 0))])
        os._exit(0)
    os.wait()
    time.sleep(float(params.get("hold", 0)))
    return {"escaped": True}
"""
