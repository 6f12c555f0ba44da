"""A mail app that notes which process handled each message (PID_TRACE names the file)."""

import os


async def app(scope, receive, send):
    event = await receive()
    if event["type"] == "email.message":
        with open(os.environ["PID_TRACE"], "a") as f:
            f.write(f"{os.getpid()}\n")
