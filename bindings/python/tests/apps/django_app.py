"""A one-file Django project (settings, URLs, views) served unchanged by the tests and the
benchmark: ``rcluster-serve django_app:application``."""

import hashlib
import os

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="rcluster-tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        DATA_UPLOAD_MAX_MEMORY_SIZE=None,
    )

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def hello(request):
    return HttpResponse("Hello, World!", content_type="text/plain")


def json_view(request):
    return JsonResponse({"pid": os.getpid(), "args": dict(request.GET.items())})


@csrf_exempt
def echo(request):
    data = request.body
    resp = HttpResponse(data, content_type="application/octet-stream")
    resp["X-Length"] = str(len(data))
    resp["X-Sha1"] = hashlib.sha1(data).hexdigest()
    return resp


def stream(request):
    n = int(request.GET.get("n", "5"))
    return StreamingHttpResponse((f"chunk {i}\n" for i in range(n)), content_type="text/plain")


urlpatterns = [
    path("", hello),
    path("json", json_view),
    path("echo", echo),
    path("stream", stream),
]

application = get_wsgi_application()
