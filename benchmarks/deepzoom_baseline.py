"""The baseline tile server, built the way OpenSlide's example deep-zoom server is.

One DeepZoomGenerator per slide, get_tile + Pillow JPEG quality 75 per request,
a threaded HTTP server, no tile cache and no authentication.
Run: python benchmarks/deepzoom_baseline.py SLIDE PORT
"""

import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

import openslide
from openslide.deepzoom import DeepZoomGenerator

TILE_URL = re.compile(r"^/slide_files/(\d+)/(\d+)_(\d+)\.jpeg$")


def make_handler(generator: DeepZoomGenerator):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Without this, the body waits on the client's delayed ACK of the headers (~40 ms
        # per tile): the baseline would measure a TCP artefact, not tile serving.
        disable_nagle_algorithm = True

        def do_GET(self):
            match = TILE_URL.match(self.path)
            if not match:
                self.send_error(404)
                return
            level, col, row = (int(part) for part in match.groups())
            try:
                tile = generator.get_tile(level, (col, row))
            except ValueError:
                self.send_error(404)
                return
            buffer = BytesIO()
            tile.save(buffer, "jpeg", quality=75)
            body = buffer.getvalue()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main() -> None:
    slide_path, port = sys.argv[1], int(sys.argv[2])
    generator = DeepZoomGenerator(openslide.OpenSlide(slide_path), 254, 1, limit_bounds=False)
    ThreadingHTTPServer(("127.0.0.1", port), make_handler(generator)).serve_forever()


if __name__ == "__main__":
    main()
