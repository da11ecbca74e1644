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

BAD_SYNTAX = """
def main(params)
    return {}
"""
