"""The server's persistent state in one folder: SQLite for projects, classes, images and embeddings, plus the
image files themselves.

Layout of ``DATA_DIR``::

    fewshot.sqlite3          projects, classes, images (sha256, size, format), embeddings per model
    images/ab/abcdef...      each uploaded file once, named by the sha256 of its bytes (never by its name)
    thumbs/ab/abcdef....png  a small PNG per image, for the page

Discipline: WAL journal, a connection per operation, every write in ``BEGIN IMMEDIATE`` (writers queue on
SQLite's lock, readers never block). An image file (and its thumbnail) is written atomically and fsynced
before the row that names it is committed, so a killed server never has a row without its file; a file
without a row (a crash between the two) is swept at the next start. Files are shared by content, so the
check that an upload's file is there and the check that a deleted image's file is unused each run inside a
write transaction (SQLite's write lock orders them): a concurrent upload of the same bytes never commits a
row whose file a deletion then unlinks. Ids are never reused (``AUTOINCREMENT``): caches keyed by id stay
right. The schema is versioned with ``PRAGMA user_version``; :mod:`.migrations` upgrades older folders in
place.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import atomic_write
from ..errors import FewshotError
from .migrations import migrate

DB_NAME = "fewshot.sqlite3"



class NotFound(FewshotError):
    """A project, class or image id that does not exist (HTTP 404)."""


class Conflict(FewshotError):
    """A name already taken, or an image already in another class (HTTP 409)."""


class LimitExceeded(FewshotError):
    """A project would hold more images than allowed (HTTP 413)."""


@dataclass
class NewImage:
    """A verified upload, ready to store."""

    data: bytes
    sha256: str
    name: str  # the client's file name, for display only
    format: str  # PIL's format name: PNG, JPEG, ...
    width: int
    height: int
    thumbnail: bytes  # PNG


class Store:
    """Projects, classes and images in ``data_dir`` (created if missing)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "images").mkdir(exist_ok=True)
            (self.root / "thumbs").mkdir(exist_ok=True)
        except OSError as exc:
            raise FewshotError(f"cannot use data folder {self.root}: {exc.strerror or exc}; give another "
                               "--data-dir") from None
        self.db_path = self.root / DB_NAME
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise FewshotError(f"{self.db_path} is not a readable fewshot database ({exc}); move it away or give "
                               "another --data-dir") from None
        self.sweep_orphans()

    # ------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA busy_timeout = 30000")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement in the block sees the same snapshot of the database (WAL), so
        a project read in three queries never mixes states (a class created between them)."""
        connection = self._connect()
        try:
            connection.execute("BEGIN")
            try:
                yield connection
            finally:
                connection.execute("COMMIT")
        finally:
            connection.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back on any exception."""
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    def _migrate(self) -> None:
        """Bring the schema up to date (:func:`.migrations.migrate`)."""
        migrate(self._connect(), self.db_path)

    def schema_version(self) -> int:
        with self._read() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    # ------------------------------------------------------------------ files
    def image_path(self, sha256: str) -> Path:
        return self.root / "images" / sha256[:2] / sha256

    def thumbnail_path(self, sha256: str) -> Path:
        return self.root / "thumbs" / sha256[:2] / f"{sha256}.png"

    def sweep_orphans(self) -> int:
        """Delete image files no row names (left by a crash between file and commit, or by deletions);
        returns how many were removed. Runs in a write transaction, as :meth:`_remove_unused_files` does."""
        removed = 0
        with self._write() as db:
            wanted = {row[0] for row in db.execute("SELECT DISTINCT sha256 FROM images")}
            for folder, suffix in (("images", ""), ("thumbs", ".png")):
                for path in (self.root / folder).glob("*/*"):
                    digest = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
                    if path.name.startswith(".") or digest not in wanted:
                        with contextlib.suppress(OSError):
                            path.unlink()
                            removed += 1
        return removed

    def _write_files(self, image: NewImage) -> None:
        """The image file and its thumbnail, each written (atomically, fsynced) unless already there."""
        if not self.image_path(image.sha256).exists():
            atomic_write(self.image_path(image.sha256), lambda handle, data=image.data: handle.write(data))
        if not self.thumbnail_path(image.sha256).exists():
            atomic_write(self.thumbnail_path(image.sha256), lambda handle, data=image.thumbnail: handle.write(data))

    def _remove_unused_files(self, digests: set[str]) -> None:
        """Delete the files of those ``digests`` that no row names any more; called after the deletion that
        freed them has committed. The "still used?" check and the unlinking happen inside one write
        transaction: an upload writes (or rewrites) its files and commits its rows inside its own write
        transaction, so it cannot slip in between and commit a row whose file is then unlinked. A crash
        between the deletion's commit and this leaves orphan files only, swept at the next start."""
        if not digests:
            return
        with self._write() as db:
            used = {row[0] for row in db.execute(
                f"SELECT sha256 FROM images WHERE sha256 IN ({','.join('?' * len(digests))})", tuple(digests))}
            for digest in digests - used:
                for path in (self.image_path(digest), self.thumbnail_path(digest)):
                    with contextlib.suppress(OSError):
                        path.unlink()

    # ------------------------------------------------------------------ projects
    def list_projects(self) -> list[dict]:
        with self._read() as db:
            rows = db.execute(
                "SELECT p.id, p.name, p.created, "
                "(SELECT COUNT(*) FROM classes c WHERE c.project_id = p.id) AS classes, "
                "(SELECT COUNT(*) FROM images i WHERE i.project_id = p.id) AS images "
                "FROM projects p ORDER BY p.id").fetchall()
        return [dict(row) for row in rows]

    def create_project(self, name: str, adapt: str = "none") -> int:
        with self._write() as db:
            self._check_project_name(db, name)
            return db.execute("INSERT INTO projects (name, created, adapt) VALUES (?, ?, ?)",
                              (name, time.time(), adapt)).lastrowid

    @staticmethod
    def _check_project_name(db: sqlite3.Connection, name: str, project_id: int | None = None) -> None:
        """Project names are distinct (the page lists projects by name), compared without case."""
        row = db.execute("SELECT id FROM projects WHERE lower(name) = lower(?) AND id != ?",
                         (name, project_id or 0)).fetchone()
        if row is not None:
            raise Conflict(f"a project named '{name}' already exists (project {row[0]}): choose another name")

    def project(self, project_id: int) -> dict:
        """``{id, name, revision, adapt, classes: [{id, name, images: [...]}]}``."""
        with self._read() as db:
            row = db.execute("SELECT id, name, revision, created, adapt FROM projects WHERE id = ?",
                             (project_id,)).fetchone()
            if row is None:
                raise NotFound(f"project {project_id} does not exist")
            classes = [dict(c) | {"images": []} for c in db.execute(
                "SELECT id, name FROM classes WHERE project_id = ? ORDER BY id", (project_id,))]
            by_id = {c["id"]: c for c in classes}
            for image in db.execute("SELECT id, class_id, sha256, name, format, width, height, bytes FROM images "
                                    "WHERE project_id = ? ORDER BY id", (project_id,)):
                by_id[image["class_id"]]["images"].append(dict(image))
        return dict(row) | {"classes": classes}

    def rename_project(self, project_id: int, name: str) -> None:
        with self._write() as db:
            self._check_project_name(db, name, project_id)
            if db.execute("UPDATE projects SET name = ? WHERE id = ?", (name, project_id)).rowcount == 0:
                raise NotFound(f"project {project_id} does not exist")

    def set_adapt(self, project_id: int, adapt: str) -> None:
        """The project's adaptation setting (checked by the caller); the examples are unchanged, so the revision
        stays (the engine keys its adapted classifier by revision and setting)."""
        with self._write() as db:
            if db.execute("UPDATE projects SET adapt = ? WHERE id = ?", (adapt, project_id)).rowcount == 0:
                raise NotFound(f"project {project_id} does not exist")

    def delete_project(self, project_id: int) -> None:
        with self._write() as db:
            digests = {r[0] for r in db.execute("SELECT sha256 FROM images WHERE project_id = ?", (project_id,))}
            if db.execute("DELETE FROM projects WHERE id = ?", (project_id,)).rowcount == 0:
                raise NotFound(f"project {project_id} does not exist")
        self._remove_unused_files(digests)

    @staticmethod
    def _touch(db: sqlite3.Connection, project_id: int) -> None:
        """A project's images or classes changed: a new revision (cached classifiers rebuild)."""
        db.execute("UPDATE projects SET revision = revision + 1 WHERE id = ?", (project_id,))

    @staticmethod
    def _check_project(db: sqlite3.Connection, project_id: int) -> None:
        if db.execute("SELECT 1 FROM projects WHERE id = ?", (project_id,)).fetchone() is None:
            raise NotFound(f"project {project_id} does not exist")

    @staticmethod
    def _check_class(db: sqlite3.Connection, project_id: int, class_id: int) -> str:
        Store._check_project(db, project_id)
        row = db.execute("SELECT name FROM classes WHERE id = ? AND project_id = ?", (class_id, project_id)).fetchone()
        if row is None:
            raise NotFound(f"class {class_id} does not exist in project {project_id}")
        return row[0]

    # ------------------------------------------------------------------ classes
    def create_class(self, project_id: int, name: str) -> int:
        with self._write() as db:
            self._check_project(db, project_id)
            try:
                class_id = db.execute("INSERT INTO classes (project_id, name, created) VALUES (?, ?, ?)",
                                      (project_id, name, time.time())).lastrowid
            except sqlite3.IntegrityError:
                raise Conflict(f"project {project_id} already has a class named '{name}': choose another name") from None
            self._touch(db, project_id)
            return class_id

    def class_info(self, project_id: int, class_id: int) -> dict:
        for entry in self.project(project_id)["classes"]:
            if entry["id"] == class_id:
                return entry
        raise NotFound(f"class {class_id} does not exist in project {project_id}")

    def rename_class(self, project_id: int, class_id: int, name: str) -> None:
        with self._write() as db:
            self._check_class(db, project_id, class_id)
            try:
                db.execute("UPDATE classes SET name = ? WHERE id = ?", (name, class_id))
            except sqlite3.IntegrityError:
                raise Conflict(f"project {project_id} already has a class named '{name}': choose another name") from None
            self._touch(db, project_id)

    def delete_class(self, project_id: int, class_id: int) -> None:
        with self._write() as db:
            self._check_class(db, project_id, class_id)
            digests = {r[0] for r in db.execute("SELECT sha256 FROM images WHERE class_id = ?", (class_id,))}
            db.execute("DELETE FROM classes WHERE id = ?", (class_id,))
            self._touch(db, project_id)
        self._remove_unused_files(digests)

    # ------------------------------------------------------------------ images
    def add_images(self, project_id: int, class_id: int, images: list[NewImage], max_per_project: int
                   ) -> tuple[list[int], list[dict]]:
        """Store verified uploads in a class: (ids of the added images, ``[{name, reason}]`` skipped because the
        class already holds the same bytes). An image already in another class of the project is a
        :class:`Conflict` and nothing is stored; so is going over ``max_per_project``."""
        for image in images:  # files first (idempotent, content-addressed), outside the write lock
            self._write_files(image)
        added, skipped = [], []
        with self._write() as db:
            self._check_class(db, project_id, class_id)
            seen: set[str] = set()
            fresh = []
            for image in images:
                row = db.execute("SELECT c.id, c.name FROM images i JOIN classes c ON c.id = i.class_id "
                                 "WHERE i.project_id = ? AND i.sha256 = ?", (project_id, image.sha256)).fetchone()
                if row is not None and row["id"] != class_id:
                    raise Conflict(f"'{image.name}' is already in class '{row['name']}' of this project: an image can "
                                   "be in one class only; nothing was uploaded")
                if row is not None or image.sha256 in seen:
                    skipped.append({"name": image.name, "reason": "the same image is already in this class"})
                    continue
                seen.add(image.sha256)
                fresh.append(image)
            count = db.execute("SELECT COUNT(*) FROM images WHERE project_id = ?", (project_id,)).fetchone()[0]
            if count + len(fresh) > max_per_project:
                raise LimitExceeded(f"a project holds at most {max_per_project} images; this one has {count} and the "
                                    f"upload adds {len(fresh)}: delete some or start another project")
            now = time.time()
            for image in fresh:
                # a deletion may have removed a file written above since: rewrite it under the write lock,
                # so every committed row has its file (see _remove_unused_files)
                self._write_files(image)
                added.append(db.execute(
                    "INSERT INTO images (project_id, class_id, sha256, name, format, width, height, bytes, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (project_id, class_id, image.sha256, image.name, image.format, image.width, image.height,
                     len(image.data), now)).lastrowid)
            if fresh:
                self._touch(db, project_id)
        return added, skipped

    def image(self, project_id: int, image_id: int) -> dict:
        with self._read() as db:
            self._check_project(db, project_id)
            row = db.execute("SELECT id, class_id, sha256, name, format, width, height, bytes FROM images "
                             "WHERE id = ? AND project_id = ?", (image_id, project_id)).fetchone()
        if row is None:
            raise NotFound(f"image {image_id} does not exist in project {project_id}")
        return dict(row)

    def delete_image(self, project_id: int, image_id: int) -> None:
        with self._write() as db:
            self._check_project(db, project_id)
            row = db.execute("SELECT sha256 FROM images WHERE id = ? AND project_id = ?",
                             (image_id, project_id)).fetchone()
            if row is None:
                raise NotFound(f"image {image_id} does not exist in project {project_id}")
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            self._touch(db, project_id)
        self._remove_unused_files({row[0]})

    # ------------------------------------------------------------------ embeddings
    def embeddings(self, image_ids: list[int], model_key: str) -> dict[int, np.ndarray]:
        """The cached embeddings ``(E,)`` float32 of those images that have one for ``model_key``."""
        if not image_ids:
            return {}
        found = {}
        with self._read() as db:
            for start in range(0, len(image_ids), 500):
                chunk = image_ids[start:start + 500]
                for image_id, blob in db.execute(
                        f"SELECT image_id, vector FROM embeddings WHERE model_key = ? AND image_id IN "
                        f"({','.join('?' * len(chunk))})", (model_key, *chunk)):
                    found[image_id] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def save_embeddings(self, vectors: dict[int, np.ndarray], model_key: str) -> None:
        """Cache embeddings; an image deleted meanwhile is silently left out."""
        if not vectors:
            return
        with self._write() as db:
            live = {r[0] for r in db.execute(
                f"SELECT id FROM images WHERE id IN ({','.join('?' * len(vectors))})", tuple(vectors))}
            db.executemany("INSERT OR REPLACE INTO embeddings (image_id, model_key, vector) VALUES (?, ?, ?)",
                           [(i, model_key, np.asarray(v, dtype=np.float32).tobytes())
                            for i, v in vectors.items() if i in live])
