"""A Flask app served unchanged by the tests and the benchmark (bench/run_python.sh)."""

import hashlib
import os
import time

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello, World!"


@app.route("/json")
def json_view():
    return {"pid": os.getpid(), "args": request.args.to_dict()}


@app.route("/echo", methods=["POST", "PUT"])
def echo():
    data = request.get_data()
    return Response(data, headers={"X-Length": str(len(data)), "X-Sha1": hashlib.sha1(data).hexdigest()})


@app.route("/stream")
def stream():
    n = int(request.args.get("n", "5"))
    return Response((f"chunk {i}\n" for i in range(n)), mimetype="text/plain")


@app.route("/big")
def big():
    return b"x" * int(request.args.get("n", str(1 << 20)))


@app.route("/sleep")
def sleep():
    time.sleep(float(request.args.get("s", "0.2")))
    return "slept"


@app.route("/pid")
def pid():
    return str(os.getpid())
