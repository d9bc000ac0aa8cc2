"""The server's SQLite schema, one migration per version (``PRAGMA user_version``): a data folder written by an
older fewshot is upgraded in place when a :class:`~.store.Store` opens it, one transaction per migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import FewshotError

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        revision INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE classes (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        name TEXT NOT NULL,
        format TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        created REAL NOT NULL,
        UNIQUE (project_id, sha256)
    );
    CREATE INDEX images_by_class ON images (class_id);
    CREATE TABLE embeddings (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        model_key TEXT NOT NULL,
        vector BLOB NOT NULL,
        PRIMARY KEY (image_id, model_key)
    );
    """,
    # 2: ids are never reused (AUTOINCREMENT): the engine caches pixels and embeddings by image id, and
    # SQLite would otherwise hand a deleted highest id to the next image. Rebuilt the SQLite way (new table,
    # copy, drop, rename), keeping every row and id; _migrate turns foreign keys off around it, so dropping
    # the old tables cascades nowhere and embeddings keep pointing at the same ids.
    """
    CREATE TABLE projects_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        revision INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO projects_new (id, name, created, revision) SELECT id, name, created, revision FROM projects;
    CREATE TABLE classes_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (project_id, name)
    );
    INSERT INTO classes_new (id, project_id, name, created) SELECT id, project_id, name, created FROM classes;
    CREATE TABLE images_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        name TEXT NOT NULL,
        format TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        created REAL NOT NULL,
        UNIQUE (project_id, sha256)
    );
    INSERT INTO images_new (id, project_id, class_id, sha256, name, format, width, height, bytes, created)
        SELECT id, project_id, class_id, sha256, name, format, width, height, bytes, created FROM images;
    DROP TABLE images;
    DROP TABLE classes;
    DROP TABLE projects;
    ALTER TABLE projects_new RENAME TO projects;
    ALTER TABLE classes_new RENAME TO classes;
    ALTER TABLE images_new RENAME TO images;
    CREATE INDEX images_by_class ON images (class_id);
    """,
    # 3: a project's adaptation setting (none | top | auto: fewshot.inference.adaptation), set on the page
    """
    ALTER TABLE projects ADD COLUMN adapt TEXT NOT NULL DEFAULT 'none';
    """,
]


def migrate(connection: sqlite3.Connection, db_path: Path) -> None:
    """Bring the schema up to date, one transaction per migration. Foreign keys are off meanwhile (a
    rebuilt table is dropped and replaced; with them on, the drop would cascade into its children) and
    checked before each commit; ``PRAGMA foreign_keys`` cannot change inside a transaction, so it is set
    on the connection first."""
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA foreign_keys = OFF")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise FewshotError(f"{db_path} was written by a newer fewshot (schema {version}; this one knows "
                               f"{len(MIGRATIONS)}): upgrade fewshot or give another --data-dir")
        for number in range(version, len(MIGRATIONS)):
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        connection.execute(statement)
                broken = connection.execute("PRAGMA foreign_key_check").fetchone()
                if broken is not None:
                    raise FewshotError(f"{db_path}: upgrading to schema {number + 1} found a row of "
                                       f"'{broken[0]}' that points at a missing '{broken[2]}' row; nothing was "
                                       "changed: restore a backup or give another --data-dir")
                connection.execute(f"PRAGMA user_version = {number + 1}")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
    finally:
        connection.close()
