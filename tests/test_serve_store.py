"""``fewshot serve``'s store without a server: schema migrations keep rows, ids and embeddings; ids are never
reused; a deletion racing an upload of the same bytes never leaves a committed row without its file; atomic
writes from many threads."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading

import numpy as np
import pytest

from fewshot.atomic import atomic_write
from fewshot.serve.migrations import MIGRATIONS
from fewshot.serve.store import DB_NAME, NewImage, Store


def new_image(seed: int) -> NewImage:
    data = f"image bytes {seed}".encode() * 10
    return NewImage(data, hashlib.sha256(data).hexdigest(), f"{seed}.png", "PNG", 4, 4, b"thumb %d" % seed)


def v1_database(folder) -> None:
    """A data folder as the first schema left it: two projects, classes, images and embeddings (image 2 was
    deleted, so ids have a gap)."""
    folder.mkdir()
    db = sqlite3.connect(folder / DB_NAME)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO projects (id, name, created, revision) VALUES (1, 'one', 1.0, 5), (3, 'three', 2.0, 0)")
    db.execute("INSERT INTO classes (id, project_id, name, created) VALUES (1, 1, 'a', 1.0), (4, 1, 'b', 1.0), "
               "(5, 3, 'c', 2.0)")
    images = {1: (1, 1, new_image(1)), 3: (1, 4, new_image(3)), 7: (3, 5, new_image(7))}
    for image_id, (project_id, class_id, image) in images.items():
        db.execute("INSERT INTO images (id, project_id, class_id, sha256, name, format, width, height, bytes, "
                   "created) VALUES (?, ?, ?, ?, ?, 'PNG', 4, 4, ?, 1.0)",
                   (image_id, project_id, class_id, image.sha256, image.name, len(image.data)))
        for model in ("m1", "m2"):
            db.execute("INSERT INTO embeddings (image_id, model_key, vector) VALUES (?, ?, ?)",
                       (image_id, model, np.full(3, image_id, np.float32).tobytes()))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def dump(store: Store) -> dict:
    with sqlite3.connect(store.db_path) as db:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("projects", "classes", "images", "embeddings")}


def test_v1_database_migrates_keeping_rows_ids_and_embeddings(tmp_path):
    v1_database(tmp_path / "data")
    with sqlite3.connect(tmp_path / "data" / DB_NAME) as db:
        before = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                  for table in ("projects", "classes", "images", "embeddings")}
    store = Store(tmp_path / "data")
    assert store.schema_version() == len(MIGRATIONS) >= 2
    before["projects"] = [row + ("none",) for row in before["projects"]]  # schema 3: no project adapts
    assert dump(store) == before  # every row, id and embedding kept
    assert store.embeddings([1, 3, 7], "m1")[3].tolist() == [3.0, 3.0, 3.0]
    with sqlite3.connect(store.db_path) as db:
        for table in ("projects", "classes", "images"):
            sql = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
            assert "AUTOINCREMENT" in sql, sql
        assert {row[2] for row in db.execute("PRAGMA foreign_key_list(embeddings)")} == {"images"}
        assert {row[2] for row in db.execute("PRAGMA foreign_key_list(images)")} == {"projects", "classes"}
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'images_by_class'").fetchone()
        assert db.execute("SELECT name FROM sqlite_master WHERE name LIKE '%_new'").fetchall() == []
    # the highest image goes (its embeddings with it: the foreign keys cascade into the rebuilt tables), and
    # the next upload gets a new id, not 7 again
    store.delete_image(3, 7)
    assert {row[0] for row in dump(store)["embeddings"]} == {1, 3}
    [new], _ = store.add_images(3, 5, [new_image(100)], 100)
    assert new == 8
    store.delete_project(3)
    assert [row[0] for row in dump(store)["images"]] == [1, 3] and [row[0] for row in dump(store)["classes"]] == [1, 4]


def test_ids_are_never_reused(tmp_path):
    store = Store(tmp_path / "data")
    project = store.create_project("p")
    classes = [store.create_class(project, name) for name in ("a", "b")]
    added, _ = store.add_images(project, classes[0], [new_image(n) for n in range(3)], 100)
    store.delete_image(project, max(added))  # the highest id goes
    [again], _ = store.add_images(project, classes[0], [new_image(10)], 100)
    assert again > max(added)
    store.delete_class(project, classes[1])
    assert store.create_class(project, "c") > max(classes)
    store.delete_project(project)
    assert store.create_project("q") > project
    assert Store(tmp_path / "data").create_project("r") > project + 1  # also after a restart


def test_upload_racing_a_delete_of_the_same_bytes_keeps_its_file(tmp_path):
    """The deletion lands between the upload's file check and its transaction: the file it found is unlinked
    as unused, and the upload must write it again before committing the row that names it."""
    store = Store(tmp_path / "data")
    first_project, second_project = store.create_project("a"), store.create_project("b")
    first_class, second_class = store.create_class(first_project, "x"), store.create_class(second_project, "y")
    image = new_image(1)
    [first], _ = store.add_images(first_project, first_class, [image], 10)
    write = store._write

    def delete_first_then_write():
        store._write = write
        store.delete_image(first_project, first)
        assert not store.image_path(image.sha256).exists()  # unlinked: no row named it any more
        return write()

    store._write = delete_first_then_write
    [second], _ = store.add_images(second_project, second_class, [image], 10)
    assert store._write is write  # the interleaving happened
    assert store.image(second_project, second)["sha256"] == image.sha256
    assert store.image_path(image.sha256).read_bytes() == image.data
    assert store.thumbnail_path(image.sha256).read_bytes() == image.thumbnail


def test_concurrent_uploads_and_deletes_of_the_same_bytes(tmp_path):
    """Threads upload the same bytes to their own projects and delete them again: whenever a thread's row
    exists, so does the file (and at the end, every row's file exists)."""
    store = Store(tmp_path / "data")
    image = new_image(2)
    places = [(p, store.create_class(p, "c")) for p in (store.create_project(f"p{n}") for n in range(4))]
    missing, failures = [], []
    start = threading.Barrier(len(places))

    def worker(project: int, class_id: int):
        try:
            start.wait()
            for _ in range(15):
                [image_id], _ = store.add_images(project, class_id, [image], 10)
                if not (store.image_path(image.sha256).exists() and store.thumbnail_path(image.sha256).exists()):
                    missing.append(image_id)
                store.delete_image(project, image_id)
            store.add_images(project, class_id, [image], 10)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=place) for place in places]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and missing == []
    assert len(dump(store)["images"]) == len(places)
    assert store.image_path(image.sha256).read_bytes() == image.data


def test_atomic_write_from_many_threads_to_one_file(tmp_path):
    target = tmp_path / "out" / "model.bin"
    versions = [bytes([n]) * 300_000 for n in range(16)]
    start = threading.Barrier(len(versions))
    failures = []

    def writer(data: bytes):
        try:
            start.wait()
            for _ in range(3):
                atomic_write(target, lambda handle: [handle.write(data[i:i + 10_000]) for i in range(0, len(data),
                                                                                                    10_000)])
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(data,)) for data in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert target.read_bytes() in versions  # one complete version, never a mix
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]  # no temporary file left


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    from fewshot.errors import FewshotError

    target = tmp_path / "kept.txt"
    target.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(FewshotError, match="cannot write .*No space left on device.*previous file, if any, is intact"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
    atomic_write(target, lambda handle: handle.write(b"new"))
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it
