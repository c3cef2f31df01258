"""A WSGI app wrapped in wsgiref.validate: any breach of PEP 3333 by the server (environ
types and keys, start_response, the input stream, iteration, close) raises AssertionError in
the app (a 500) or a WSGIWarning (made an error by the tests' -W option)."""

from wsgiref.validate import validator


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        inp = environ["wsgi.input"]
        first = inp.readline()
        rest = inp.read(int(environ.get("CONTENT_LENGTH") or 0) - len(first))
        body = first + rest
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part %d\n" % i for i in range(10))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"then returned\n"]
    if path == "/environ":
        keys = sorted(k for k in environ if k.isupper())
        body = "\n".join(f"{k}={environ[k]}" for k in keys).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    body = b"strict ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
