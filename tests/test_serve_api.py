"""``fewshot serve`` against a real uvicorn process on 127.0.0.1: the API, every kind of bad input, the limits,
tokens, concurrency, and a SIGKILL + restart that keeps every committed upload."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="needs the fewshot[serve] extra")
from serving import Server, colour_png, files  # noqa: E402

LIMITS = ["--max-file-mb", "0.05", "--max-files", "6", "--max-images", "24", "--max-pixels", "1000000"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("serve") / "data", *LIMITS).start()
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c


def make_project(client, name="p", classes=("red", "green", "blue"), per_class=3, seed=0) -> tuple[int, dict]:
    project = client.post("/api/v1/projects", json={"name": name}).json()
    ids = {}
    for colour in classes:
        created = client.post(f"/api/v1/projects/{project['id']}/classes", json={"name": colour})
        assert created.status_code == 201, created.text
        ids[colour] = created.json()["id"]
        if per_class:
            upload = client.post(f"/api/v1/projects/{project['id']}/classes/{ids[colour]}/images",
                                 files=files(*[(f"{colour}{i}.png", colour_png(colour, seed * 100 + i))
                                               for i in range(per_class)]))
            assert upload.status_code == 201, upload.text
    return project["id"], ids


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]


# ---------------------------------------------------------------------------------------------- the happy path
def test_projects_classes_images_crud(client):
    pid, ids = make_project(client, "crud")
    project = client.get(f"/api/v1/projects/{pid}").json()
    assert [c["name"] for c in project["classes"]] == ["red", "green", "blue"]
    assert all(len(c["images"]) == 3 for c in project["classes"])
    assert any(p["id"] == pid and p["images"] == 9 for p in client.get("/api/v1/projects").json()["projects"])

    assert client.patch(f"/api/v1/projects/{pid}", json={"name": "renamed"}).json()["name"] == "renamed"
    renamed = client.patch(f"/api/v1/projects/{pid}/classes/{ids['red']}", json={"name": "rouge"})
    assert renamed.json()["name"] == "rouge"
    image = project["classes"][0]["images"][0]
    thumb = client.get(image["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/png" and Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    original = client.get(image["url"])
    assert original.content == colour_png("red", 0)
    listed = client.get(f"/api/v1/projects/{pid}/classes/{ids['red']}/images").json()["images"]
    assert len(listed) == 3

    assert client.delete(f"/api/v1/projects/{pid}/images/{image['id']}").status_code == 204
    assert len(client.get(f"/api/v1/projects/{pid}/classes/{ids['red']}").json()["images"]) == 2
    assert_error(client.get(image["url"]), 404, "does not exist")
    assert client.delete(f"/api/v1/projects/{pid}/classes/{ids['green']}").status_code == 204
    assert [c["name"] for c in client.get(f"/api/v1/projects/{pid}").json()["classes"]] == ["rouge", "blue"]
    assert client.delete(f"/api/v1/projects/{pid}").status_code == 204
    assert_error(client.get(f"/api/v1/projects/{pid}"), 404, f"project {pid}")


def test_predict_explain_estimate_and_embedding_cache(client):
    pid, ids = make_project(client, "predict", per_class=4, seed=1)
    before = client.get("/api/v1/info").json()["embedded_images"]
    answer = client.post(f"/api/v1/projects/{pid}/predict?explain=true",
                         files=files(("q1.png", colour_png("green", 999)), ("q2.png", colour_png("blue", 998))))
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["predictions"]
    assert (first["name"], first["predicted"], second["predicted"]) == ("q1.png", "green", "blue")
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-4 and set(first["probabilities"]) == set(ids)
    heatmap = Image.open(io.BytesIO(__import__("base64").b64decode(first["heatmap"].split(",", 1)[1])))
    assert heatmap.format == "PNG" and heatmap.size == (32, 32)
    plain = client.post(f"/api/v1/projects/{pid}/predict", files=files(("q.png", colour_png("red", 5))))
    assert "heatmap" not in plain.json()["predictions"][0]
    # the 12 images were embedded at upload; predicting embedded none of them again
    assert client.get("/api/v1/info").json()["embedded_images"] == before
    client.post(f"/api/v1/projects/{pid}/classes/{ids['red']}/images", files=files(("new.png", colour_png("red", 77))))
    client.post(f"/api/v1/projects/{pid}/predict", files=files(("q.png", colour_png("red", 5))))
    assert client.get("/api/v1/info").json()["embedded_images"] == before + 1  # only the new image

    estimate = client.post(f"/api/v1/projects/{pid}/estimate", json={"repeats": 20}).json()
    assert estimate["low"] <= estimate["accuracy"] <= estimate["high"] and estimate["accuracy"] > 80
    assert estimate["class_names"] == sorted(ids) and np.array(estimate["confusion"]).shape == (3, 3)
    assert estimate["images"] == 13 and "interval" in estimate["summary"]
    assert {row["class"] for row in estimate["per_class"]} == set(ids)
    assert client.post(f"/api/v1/projects/{pid}/estimate").status_code == 200  # the body is optional


def test_export_downloads_run_standalone(client, server, tmp_path):
    pid, _ = make_project(client, "Export: ünïcode/../name", per_class=3, seed=2)
    query = colour_png("blue", 4242)
    expected = client.post(f"/api/v1/projects/{pid}/predict", files=files(("q.png", query))).json()["predictions"][0]
    pixels = np.array(Image.open(io.BytesIO(query)))
    script = client.get(f"/api/v1/projects/{pid}/export", params={"format": "torchscript"})
    assert script.status_code == 200, script.text
    assert 'filename="Export-unicode-name.pt"' in script.headers["content-disposition"]
    (tmp_path / "m.pt").write_bytes(script.content)
    module = torch.jit.load(str(tmp_path / "m.pt"))
    probabilities = module(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    names = sorted(expected["probabilities"])
    assert names[int(probabilities.argmax())] == expected["predicted"]
    assert float(probabilities.max()) == pytest.approx(max(expected["probabilities"].values()), abs=1e-4)
    ort = pytest.importorskip("onnxruntime", reason="needs the fewshot[onnx] extra")
    for fmt in ("onnx", "onnx-int8"):
        answer = client.get(f"/api/v1/projects/{pid}/export", params={"format": fmt})
        assert answer.status_code == 200, answer.text
        session = ort.InferenceSession(answer.content, providers=["CPUExecutionProvider"])
        output = session.run(None, {session.get_inputs()[0].name: pixels[None]})[0]
        assert names[int(output.argmax())] == expected["predicted"]
    for _ in range(50):  # the temporary export folders go once the downloads are sent
        if not [p for p in (server.data_dir / "tmp").rglob("*") if p.is_file()]:
            break
        __import__("time").sleep(0.1)
    assert not [p for p in (server.data_dir / "tmp").rglob("*") if p.is_file()]


def test_unicode_and_html_names_round_trip(client):
    name = "<img src=x onerror=alert(1)> 猫 👩‍🔬 ﷽"
    pid = client.post("/api/v1/projects", json={"name": "  names  "}).json()["id"]
    assert client.get(f"/api/v1/projects/{pid}").json()["name"] == "names"  # trimmed
    made = client.post(f"/api/v1/projects/{pid}/classes", json={"name": name})
    assert made.status_code == 201 and made.json()["name"] == name.strip()
    upload = client.post(f"/api/v1/projects/{pid}/classes/{made.json()['id']}/images",
                         files=files(("../../../etc/passwd.png", colour_png("red", 1)),
                                     ("C:\\Windows\\evil.png", colour_png("red", 2))))
    assert [i["name"] for i in upload.json()["added"]] == ["passwd.png", "evil.png"]
    assert_error(client.post(f"/api/v1/projects/{pid}/classes", json={"name": "abc\u202egnp.exe"}), 400, "U+202E")


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_names_and_bodies(client):
    pid, ids = make_project(client, "bad", classes=("red",), per_class=0)
    classes = f"/api/v1/projects/{pid}/classes"
    assert_error(client.post(classes, json={"name": ""}), 400, "empty")
    assert_error(client.post(classes, json={"name": "x" * 101}), 400, "at most 100")
    assert_error(client.post(classes, json={"name": "a\u0007b"}), 400, "control character")
    assert_error(client.post(classes, json={"name": 5}), 400, "name")
    assert_error(client.post(classes, json={"name": "ok", "colour": 1}), 400, "colour", "unknown key")
    assert_error(client.post(classes, content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON")
    assert_error(client.post(classes, json={"name": "red"}), 409, "already has a class named 'red'")
    assert_error(client.patch(f"{classes}/{ids['red']}", json={"name": ""}), 400, "empty")
    assert_error(client.post(f"/api/v1/projects/{pid}/estimate", json={"repeats": 0}), 400, "repeats")
    assert_error(client.get(f"/api/v1/projects/{pid}/export", params={"format": "zip"}), 400, "format")


def test_not_found_everywhere(client):
    pid, ids = make_project(client, "nf", classes=("red",), per_class=1)
    other, _ = make_project(client, "other", classes=("blue",), per_class=0)
    assert_error(client.get("/api/v1/projects/999999"), 404, "project 999999")
    assert_error(client.get("/api/v1/projects/abc"), 400, "project_id")
    assert_error(client.get(f"/api/v1/projects/{other}/classes/{ids['red']}"), 404, "does not exist")  # not its class
    assert_error(client.post(f"/api/v1/projects/{other}/classes/{ids['red']}/images",
                             files=files(("a.png", colour_png("red", 3)))), 404, "does not exist")
    assert_error(client.delete(f"/api/v1/projects/{pid}/images/999999"), 404, "image 999999")
    assert_error(client.get("/api/v1/nothing"), 404, "no such endpoint")
    assert_error(client.put(f"/api/v1/projects/{pid}"), 405, "not allowed")


def test_uploads_verified_by_content(client):
    pid, ids = make_project(client, "content", classes=("red", "green"), per_class=0)
    url = f"/api/v1/projects/{pid}/classes/{ids['red']}/images"
    assert_error(client.post(url, files=files(("x.png", b"#!/bin/sh\nrm -rf /\n"))), 415, "x.png", "not an image")
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    assert_error(client.post(url, files=files(("x.ico", ico.getvalue()))), 415, "ICO")
    truncated = colour_png("red", 1)[:-60]
    assert_error(client.post(url, files=files(("cut.png", truncated))), 400, "cut.png", "damaged")
    assert_error(client.post(url, files=files(("empty.png", b""))), 400, "empty")
    assert_error(client.post(url), 400, "no files")
    # a JPEG named .png is accepted for what it is
    jpeg = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(jpeg, format="JPEG")
    added = client.post(url, files=files(("really-a-jpeg.png", jpeg.getvalue()))).json()["added"]
    assert added[0]["format"] == "JPEG"
    # one bad file rejects the whole request: nothing stored
    answer = client.post(url, files=files(("ok.png", colour_png("red", 9)), ("bad.png", b"nope"),
                                          ("worse.png", b"also not")))
    assert_error(answer, 415, "bad.png", "worse.png", "2 of 3 files refused, nothing was stored",
                 "upload the other 1 again")
    assert len(client.get(f"/api/v1/projects/{pid}/classes/{ids['red']}").json()["images"]) == 1


def corrupt_images() -> dict[str, bytes]:
    """Damaged files of the accepted formats; PIL fails on each with a different exception (the TIFF one with a
    TypeError, not an OSError)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def saved(image: Image.Image, fmt: str) -> bytearray:
        out = io.BytesIO()
        image.save(out, format=fmt)
        return bytearray(out.getvalue())

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
           + chunk(b"zZzZ", b"\xff" * 40) + chunk(b"IDAT", b"\x00garbage") + chunk(b"IEND", b""))
    bmp = saved(Image.new("RGB", (8, 8)), "BMP")
    struct.pack_into("<H", bmp, 28, 7)  # 7 bits per pixel
    gif = saved(Image.new("P", (16, 16), 3), "GIF")
    start = gif.index(b",") + 10  # the LZW code size, after the image descriptor
    gif[start:-1] = bytes([11]) + b"\xff" * (len(gif) - start - 2)
    tiff = saved(Image.new("RGB", (8, 8), (200, 10, 10)), "TIFF")
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for entry in range(struct.unpack("<H", tiff[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack("<H", tiff[at:at + 2])[0] == 273:  # StripOffsets, typed UNDEFINED: bytes, not numbers
            struct.pack_into("<H", tiff, at + 2, 7)
    return {"garbage-chunks.png": png, "bogus-header.bmp": bytes(bmp), "broken-lzw.gif": bytes(gif),
            "bad-tags.tif": bytes(tiff), "header-only.webp": b"RIFF\x10\x00\x00\x00WEBPVP8 \xff\xff\xff\xff"}


def test_corrupt_images_are_400_never_500(client):
    pid, ids = make_project(client, "corrupt", classes=("red", "green"), per_class=1)
    for name, data in corrupt_images().items():
        for url in (f"/api/v1/projects/{pid}/classes/{ids['red']}/images", f"/api/v1/projects/{pid}/predict"):
            answer = client.post(url, files=files((name, data)))
            assert answer.status_code in (400, 415), (name, url, answer.text)
            assert_error(answer, answer.status_code, name)
    assert len(client.get(f"/api/v1/projects/{pid}/classes/{ids['red']}").json()["images"]) == 1


def test_duplicates(client):
    pid, ids = make_project(client, "dups", classes=("red", "green"), per_class=0)
    image = colour_png("red", 11)
    first = client.post(f"/api/v1/projects/{pid}/classes/{ids['red']}/images",
                        files=files(("a.png", image), ("a-again.png", image)))
    assert len(first.json()["added"]) == 1 and first.json()["skipped"][0]["name"] == "a-again.png"
    again = client.post(f"/api/v1/projects/{pid}/classes/{ids['red']}/images", files=files(("b.png", image)))
    assert again.json()["added"] == [] and "already in this class" in again.json()["skipped"][0]["reason"]
    assert_error(client.post(f"/api/v1/projects/{pid}/classes/{ids['green']}/images",
                             files=files(("ok.png", colour_png("green", 1)), ("c.png", image))), 409, "'red'")
    assert client.get(f"/api/v1/projects/{pid}/classes/{ids['green']}").json()["images"] == []


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is garbage: decoding it would fail, so a 413
    (not a 400) proves the pixel count was refused from the header, before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")


def test_limits(client, server):
    pid, ids = make_project(client, "limits", classes=("red", "green"), per_class=0)
    url = f"/api/v1/projects/{pid}/classes/{ids['red']}/images"
    assert_error(client.post(url, files=files(("bomb.png", bomb_png(30000, 30000)))), 413, "bomb.png", "pixels")
    assert_error(client.post(url, files=files(("wide.png", bomb_png(1001, 1000)))), 413, "1,001,000")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)).save(noise, "PNG")
    assert_error(client.post(url, files=files(("big.png", noise.getvalue()))), 413, "big.png", "bytes")
    seven = files(*[(f"{i}.png", colour_png("red", 100 + i)) for i in range(7)])
    assert_error(client.post(url, files=seven), 413, "7 files", "at most 6")
    body = b"x" * (2 * 1024 * 1024)
    assert_error(client.post(url, content=body, headers={"content-type": "multipart/form-data; boundary=b"}), 413,
                 "larger than")
    for start in range(0, 24, 6):  # the project limit is 24 images
        batch = files(*[(f"{i}.png", colour_png("red", 200 + i)) for i in range(start, start + 6)])
        assert client.post(url, files=batch).status_code == 201
    assert_error(client.post(url, files=files(("25.png", colour_png("red", 999)))), 413, "at most 24 images")


def test_predict_and_estimate_need_enough_examples(client):
    pid, ids = make_project(client, "few", classes=("red", "green"), per_class=0)
    query = files(("q.png", colour_png("red", 1)))
    assert_error(client.post(f"/api/v1/projects/{pid}/predict", files=query), 409, "at least two classes")
    for colour in ids:
        client.post(f"/api/v1/projects/{pid}/classes/{ids[colour]}/images", files=files(("a.png", colour_png(colour, 1))))
    assert client.post(f"/api/v1/projects/{pid}/predict", files=query).status_code == 200
    assert_error(client.post(f"/api/v1/projects/{pid}/estimate"), 409, "at least 2 images per class")


def test_cross_site_and_rebinding_refused(client):
    assert_error(client.get("/api/v1/projects", headers={"Origin": "http://evil.example"}), 403, "cross-site")
    assert_error(client.get("/api/v1/projects", headers={"Host": "evil.example"}), 403, "refused")
    assert client.get("/api/v1/projects", headers={"Host": "localhost"}).status_code == 200


def test_null_origin_refused(client):
    """Sandboxed frames and file:// pages send 'Origin: null': foreign like any other site."""
    assert_error(client.post("/api/v1/projects", json={"name": "x"}, headers={"Origin": "null"}), 403, "cross-site")
    assert_error(client.get("/api/v1/projects", headers={"Origin": "null"}), 403, "cross-site")
    assert "x" not in [p["name"] for p in client.get("/api/v1/projects").json()["projects"]]
    own = client.post("/api/v1/projects", json={"name": "same-site"}, headers={"Origin": str(client.base_url)})
    assert own.status_code == 201  # what the page's fetch sends


def test_ids_out_of_range_are_404(client):
    pid, ids = make_project(client, "ids", classes=("red",), per_class=1)
    image = client.get(f"/api/v1/projects/{pid}").json()["classes"][0]["images"][0]
    huge = "99999999999999999999"  # past SQLite's integers
    for method, url, word in [("GET", f"/api/v1/projects/{huge}", f"project {huge}"),
                              ("DELETE", f"/api/v1/projects/{huge}", "project"),
                              ("GET", "/api/v1/projects/0", "project 0"),
                              ("GET", "/api/v1/projects/-3", "project -3"),
                              ("GET", f"/api/v1/projects/{pid}/classes/{huge}", f"class {huge}"),
                              ("GET", f"/api/v1/projects/{pid}/images/{huge}/file", f"image {huge}"),
                              ("GET", f"/api/v1/projects/{pid}/images/{huge}/thumbnail", "image"),
                              ("DELETE", f"/api/v1/projects/{pid}/images/{huge}", "image"),
                              ("GET", f"/api/v1/projects/{huge}/images/{image['id']}/file", "project"),
                              ("POST", f"/api/v1/projects/{huge}/estimate", "project")]:
        assert_error(client.request(method, url), 404, word, "does not exist")
    one = files(("a.png", colour_png("red", 4)))
    assert_error(client.post(f"/api/v1/projects/{pid}/classes/{huge}/images", files=one), 404, "class")
    assert_error(client.post(f"/api/v1/projects/{huge}/predict", files=one), 404, "project")
    assert client.get(image["url"]).status_code == 200


def test_chunked_body_over_the_cap_is_413(client):
    """A body sent without Content-Length is counted as it arrives and refused with 413 at the cap (not the
    400 the body parser would answer when the stream is cut off)."""
    pid, ids = make_project(client, "chunked", classes=("red",), per_class=0)
    cap = int(0.05 * 1024 * 1024) * 6 + 1024 * 1024  # --max-file-mb 0.05 --max-files 6 come to less than 200 MB
    head = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield head
        for _ in range(cap // 65536 + 4):
            yield b"x" * 65536

    answer = client.post(f"/api/v1/projects/{pid}/classes/{ids['red']}/images", content=body(),
                         headers={"content-type": "multipart/form-data; boundary=b"})
    assert "content-length" not in answer.request.headers
    assert_error(answer, 413, "larger than")
    assert client.get(f"/api/v1/projects/{pid}/classes/{ids['red']}").json()["images"] == []
    assert client.get("/api/v1/info").json()["limits"]["max_request_bytes"] == cap  # and the server goes on


def test_page_docs_and_schema_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    from pathlib import Path

    import fewshot.serve as serve_package

    modules = sorted(p.name for p in (Path(serve_package.__file__).parent / "static" / "js").glob("*.js"))
    assert 'type="module" src="/static/js/main.js"' in page.text and len(modules) > 5
    for asset in ["/static/style.css", *(f"/static/js/{name}" for name in modules)]:
        answer = client.get(asset)
        assert answer.status_code == 200 and "javascript" in answer.headers["content-type"] or asset.endswith(".css")
        assert asset.endswith(".css") or len(answer.text.splitlines()) <= 300, f"{asset}: a panel over 300 lines"
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    docs = client.get("/docs")
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/projects/{project_id}/predict" in paths and "/api/v1/projects/{project_id}/export" in paths


def test_concurrent_uploads_and_predictions(client):
    pid, ids = make_project(client, "busy", per_class=2, seed=3)
    errors, predicted = [], []

    def uploader(colour: str, worker: int):
        for i in range(3):
            answer = client.post(f"/api/v1/projects/{pid}/classes/{ids[colour]}/images",
                                 files=files((f"w{worker}-{i}.png", colour_png(colour, 5000 + worker * 10 + i))))
            if answer.status_code != 201:
                errors.append(answer.text)

    def predictor():
        for i in range(3):
            answer = client.post(f"/api/v1/projects/{pid}/predict", files=files(("q.png", colour_png("blue", 7000 + i))))
            (predicted.append(answer.json()["predictions"][0]["predicted"]) if answer.status_code == 200
             else errors.append(answer.text))

    threads = [threading.Thread(target=uploader, args=(c, n)) for n, c in enumerate(["red", "green", "blue", "red"])]
    threads += [threading.Thread(target=predictor) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert predicted == ["blue"] * 9
    counts = {c["name"]: len(c["images"]) for c in client.get(f"/api/v1/projects/{pid}").json()["classes"]}
    assert counts == {"red": 2 + 6, "green": 2 + 3, "blue": 2 + 3}


def upload(client, pid: int, class_id: int, *images: bytes) -> list[int]:
    answer = client.post(f"/api/v1/projects/{pid}/classes/{class_id}/images",
                         files=files(*[(f"{n}.png", data) for n, data in enumerate(images)]))
    assert answer.status_code == 201, answer.text
    return [image["id"] for image in answer.json()["added"]]


def test_deleted_image_id_is_never_reused_nor_its_cached_embedding(client):
    """The classifier's cache holds pixels and embeddings by image id: after the highest image is deleted, the
    next upload gets a new id, and predictions use its content (a red image replaced by a blue one)."""
    pid, ids = make_project(client, "reuse", classes=("red", "green", "odd"), per_class=0)
    upload(client, pid, ids["red"], colour_png("red", 1), colour_png("red", 2))
    upload(client, pid, ids["green"], colour_png("green", 1), colour_png("green", 2))
    [old] = upload(client, pid, ids["odd"], colour_png("red", 3))
    query = files(("q.png", colour_png("blue", 4)))
    assert client.post(f"/api/v1/projects/{pid}/predict", files=query).status_code == 200  # caches every image
    assert client.delete(f"/api/v1/projects/{pid}/images/{old}").status_code == 204
    [new] = upload(client, pid, ids["odd"], colour_png("blue", 5))
    assert new > old
    answer = client.post(f"/api/v1/projects/{pid}/predict", files=query).json()["predictions"][0]
    assert answer["predicted"] == "odd", answer


def test_limits_and_request_cap_flag():
    from fewshot.cli import build_parser
    from fewshot.serve.uploads import Limits

    assert Limits().request_cap == 200 * 1024 * 1024  # not 20 MB x 100 files
    assert Limits(max_request_bytes=5_000_000).request_cap == 5_000_000
    assert Limits(max_file_bytes=1000, max_files_per_request=2).request_cap == 2000 + 1024 * 1024
    assert Limits().to_json()["max_request_bytes"] == 200 * 1024 * 1024
    assert build_parser().parse_args(["serve", "--max-request-mb", "1.5"]).max_request_mb == 1.5
    assert build_parser().parse_args(["serve"]).max_request_mb == 200
    shown = run_cli("--help")
    assert shown.returncode == 0 and "--max-request-mb" in shown.stdout


def test_check_image_keeps_only_what_is_asked():
    from fewshot.serve.uploads import Limits, check_image

    data = colour_png("red", 1, size=300)
    thumb = check_image(data, "a.png", Limits())
    assert not hasattr(thumb, "image") and Image.open(io.BytesIO(thumb.kept)).size == (160, 160)
    small = check_image(data, "a.png", Limits(), keep=lambda image: image.resize((8, 8)))
    assert small.kept.size == (8, 8) and (small.width, small.height) == (300, 300)


def test_failed_embedding_after_upload_still_answers_201(tmp_path, caplog):
    """The images are committed before they are embedded: a failure there is logged, not the client's error."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from fewshot.serve.app import create_app
    from fewshot.serve.store import Store

    def embed_new(project_id, image_ids):
        raise RuntimeError("out of GPU memory")

    engine = SimpleNamespace(store=Store(tmp_path / "data"), embed_new=embed_new, tmp=tmp_path / "data" / "tmp" / "1",
                             default_adapt="none")
    with TestClient(create_app(engine, loopback_only=False), raise_server_exceptions=False) as test:
        pid = test.post("/api/v1/projects", json={"name": "p"}).json()["id"]
        cid = test.post(f"/api/v1/projects/{pid}/classes", json={"name": "c"}).json()["id"]
        answer = test.post(f"/api/v1/projects/{pid}/classes/{cid}/images", files=files(("a.png", colour_png("red", 1))))
        assert answer.status_code == 201, answer.text
        assert [i["name"] for i in answer.json()["added"]] == ["a.png"]
        assert len(test.get(f"/api/v1/projects/{pid}/classes/{cid}").json()["images"]) == 1
    assert "out of GPU memory" in caplog.text and "the next prediction embeds them" in caplog.text


# ---------------------------------------------------------------------------------------------- restarts, tokens, CLI
def test_sigkill_restart_keeps_every_upload_and_embedding(tmp_path):
    first = Server(tmp_path / "data").start()
    try:
        with first.client() as c:
            pid, ids = make_project(c, "survives", per_class=3, seed=4)
            before = c.get(f"/api/v1/projects/{pid}").json()
            wanted = c.post(f"/api/v1/projects/{pid}/predict", files=files(("q.png", colour_png("green", 1)))).json()
    finally:
        first.kill()
    (tmp_path / "data" / "images" / "zz").mkdir()
    (tmp_path / "data" / "images" / "zz" / "orphan").write_bytes(b"left by a crash before the commit")
    second = Server(tmp_path / "data").start()
    try:
        with second.client() as c:
            assert c.get(f"/api/v1/projects/{pid}").json() == before
            again = c.post(f"/api/v1/projects/{pid}/predict", files=files(("q.png", colour_png("green", 1)))).json()
            assert again == wanted
            assert c.get("/api/v1/info").json()["embedded_images"] == 0  # every embedding came from the store
            for image in before["classes"][0]["images"]:
                assert c.get(image["url"]).status_code == 200
        assert not (tmp_path / "data" / "images" / "zz" / "orphan").exists()
    finally:
        second.stop()


def test_token_required_and_checked(tmp_path):
    running = Server(tmp_path / "data", token="s3cret-token").start()
    try:
        with running.client() as anonymous, running.client("s3cret-token") as allowed, \
                running.client("wrong-token") as wrong:
            assert_error(anonymous.get("/api/v1/projects"), 401, "token")
            assert_error(wrong.get("/api/v1/projects"), 401, "token")
            assert_error(anonymous.post("/api/v1/projects", json={"name": "x"}), 401, "token")
            assert allowed.get("/api/v1/info").json()["token_required"] is True
            pid, _ = make_project(allowed, "tok", classes=("red", "green"), per_class=1)
            image = allowed.get(f"/api/v1/projects/{pid}").json()["classes"][0]["images"][0]
            # a token in the address is refused: it would land in browser history and access logs
            refused = anonymous.get(image["thumbnail_url"], params={"token": "s3cret-token"})
            assert refused.status_code == 401 and "not accepted" in refused.json()["error"]
            assert anonymous.get(image["thumbnail_url"], headers={"X-Fewshot-Token": "s3cret-token"}).status_code == 200
            assert anonymous.get("/").status_code == 200  # the page loads, then asks for the token
    finally:
        running.stop()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "fewshot", "serve", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **(env or {})))


def test_public_host_needs_token(tmp_path):
    refused = run_cli("--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"), env={"FEWSHOT_TOKEN": ""})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith("error: --host 0.0.0.0") and "--token" in refused.stderr
    short = run_cli("--token", "abc", "--data-dir", str(tmp_path / "d"))
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_port_in_use_and_bad_data_dir(tmp_path, server):
    taken = run_cli("--port", str(server.port), "--data-dir", str(tmp_path / "d"))
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{server.port}" in taken.stderr
    (tmp_path / "file").write_text("x")
    from serving import free_port

    bad = run_cli("--port", str(free_port()), "--data-dir", str(tmp_path / "file"))
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_store_schema_versions(tmp_path):
    import sqlite3

    from fewshot.errors import FewshotError
    from fewshot.serve.migrations import MIGRATIONS
    from fewshot.serve.store import Store

    store = Store(tmp_path / "a")
    assert store.schema_version() == len(MIGRATIONS)
    assert sqlite3.connect(store.db_path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with sqlite3.connect(tmp_path / "a" / "fewshot.sqlite3") as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(FewshotError, match="newer fewshot"):
        Store(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "fewshot.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(FewshotError, match="not a readable fewshot database"):
        Store(tmp_path / "b")


def test_predict_answers_none_of_these_and_exports_carry_the_threshold(client, tmp_path):
    pid, _ = make_project(client, "open set", per_class=3, seed=5)
    query = files(("q.png", colour_png("yellow", 99)))
    url = f"/api/v1/projects/{pid}/predict"
    plain = client.post(url, files=query).json()["predictions"][0]
    scored = client.post(url, params={"unknown": "auto"}, files=query).json()["predictions"][0]
    assert "unknown" not in plain and plain["probabilities"] == scored["probabilities"]
    assert scored["unknown"] == (scored["unknown_score"] > scored["unknown_threshold"])
    assert scored["predicted"] == ("unknown" if scored["unknown"] else plain["predicted"])
    low = client.post(url, params={"unknown": "-1e9"}, files=query).json()["predictions"][0]
    assert low["predicted"] == "unknown" and low["unknown_threshold"] == -1e9
    assert_error(client.post(url, params={"unknown": "maybe"}, files=query), 400, "unknown must be")
    two, _ = make_project(client, "two classes", classes=("red", "blue"), per_class=3, seed=6)
    note = client.post(f"/api/v1/projects/{two}/predict", params={"unknown": "auto"}, files=query).json()
    assert "at least 3 classes" in note["predictions"][0]["unknown_note"]
    script = client.get(f"/api/v1/projects/{pid}/export", params={"format": "torchscript"})
    (tmp_path / "m.pt").write_bytes(script.content)
    extra = {"meta.json": ""}
    module = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    meta = __import__("json").loads(extra["meta.json"])
    assert meta["unknown_threshold"] == pytest.approx(scored["unknown_threshold"])
    pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(colour_png("yellow", 99))))).permute(2, 0, 1)[None]
    probabilities, score = module.with_unknown_score(pixels)
    assert float(score[0]) == pytest.approx(scored["unknown_score"], rel=1e-3, abs=1e-4)
    assert torch.equal(probabilities, module(pixels))
