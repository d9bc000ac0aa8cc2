"""``fewshot serve``: the web page and HTTP API."""

from __future__ import annotations

import argparse
import os

from . import common
from .common import POSITIVE, add_model_arguments, int_at_least, positive_number


NAME = "serve"
PARSER = dict(
    help="a web page and HTTP API: name classes, drop a few images in each, classify new ones",
    description="Serve the web page at / (add classes, drag images in or use the webcam, see the estimated "
                "accuracy with its interval and confusion matrix, drop a new image to see its class, "
                "probabilities and heatmap, export), the JSON API at /api/v1 and its docs at /docs. Projects, "
                "images and their embeddings persist in --data-dir (SQLite + files). The model is named like "
                "for predict (default: the 'default' recipe). A project can adapt the backbone to its images "
                "(a setting on the page; --adapt or the 'adapt' recipe sets it for new projects): that runs in "
                "the background while predictions use the frozen model. Needs pip install 'fewshot[serve]'.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data-dir", metavar="DIR",
                       help="folder for projects (default $FEWSHOT_DATA_DIR, else ~/.local/share/fewshot/serve)")
    parser.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only); any other needs --token")
    parser.add_argument("--port", type=int_at_least(1), default=8000, help="port (default 8000)")
    parser.add_argument("--token", help="access token every API request must carry (Authorization: Bearer TOKEN; the "
                                       "page asks for it); default $FEWSHOT_TOKEN; required unless the host is "
                                       "loopback")
    parser.add_argument("--max-file-mb", type=positive_number, default=20, help="largest upload file in MB (default 20)")
    parser.add_argument("--max-pixels", type=POSITIVE, default=40_000_000,
                       help="most pixels per image, checked before decoding (default 40000000)")
    parser.add_argument("--max-files", type=POSITIVE, default=100, help="most files per request (default 100)")
    parser.add_argument("--max-images", type=POSITIVE, default=5000, help="most images per project (default 5000)")
    parser.add_argument("--max-request-mb", type=positive_number, default=200,
                       help="largest request body in MB, all its files together (default 200); bounds the memory one "
                            "request can take")
    parser.add_argument("--max-inflight-mb", type=positive_number, default=400,
                       help="most request bytes being received at once, all clients together (default 400); past "
                            "it a request is answered 429 with Retry-After")
    parser.add_argument("--cache-mb", type=positive_number, default=2048,
                       help="memory for the projects' decoded images and embeddings, all projects together (default "
                            "2048); the least recently used projects are dropped first and rebuilt from disk")
    parser.add_argument("--max-jobs", type=POSITIVE, default=1,
                       help="heavy jobs (estimates, exports) running at once (default 1); past it a request is "
                            "answered 429 with Retry-After. Predictions always go first")
    parser.add_argument("--access-log", action="store_true", help="log every request, one line each (time, client, method, path, status, "
                                                                  "duration, bytes); without it only errors and requests slower than 2 s")


def default_data_dir() -> str:
    """Where ``fewshot serve`` keeps projects by default: $FEWSHOT_DATA_DIR, else $XDG_DATA_HOME/fewshot/serve
    (~/.local/share/fewshot/serve)."""
    if os.environ.get("FEWSHOT_DATA_DIR"):
        return os.environ["FEWSHOT_DATA_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "fewshot", "serve")


def run(args: argparse.Namespace) -> int:
    from ..serve.server import serve
    from ..serve.uploads import Limits

    limits = Limits(max_file_bytes=int(args.max_file_mb * 1024 * 1024), max_pixels=args.max_pixels,
                    max_files_per_request=args.max_files, max_images_per_project=args.max_images,
                    max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                    max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024))
    serve(lambda: common.classifier_from_args(args), args.data_dir or default_data_dir(), host=args.host, port=args.port,
          token=args.token, limits=limits, access_log=args.access_log,
          cache_mb=args.cache_mb, max_jobs=args.max_jobs)
    return 0
