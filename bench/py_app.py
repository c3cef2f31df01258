"""The WSGI app both Python contestants serve in bench/run_python.sh (rcluster's
examples/python/wsgi_server.py and gunicorn's sync workers)."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
