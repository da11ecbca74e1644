"""Binary payloads stored inline up to a threshold and in GridFS beyond it.

MongoDB rejects documents over 16 MB, so anything over 15 MB goes to GridFS automatically and
the document keeps only a reference.
"""

from __future__ import annotations

from typing import Any

import gridfs
from bson import Binary, ObjectId
from pymongo.database import Database

INLINE_LIMIT = 15 * 1024 * 1024


class BlobStore:
    """Put and get byte strings; a blob reference is a small dict to embed in a document."""

    def __init__(self, db: Database, inline_limit: int = INLINE_LIMIT) -> None:
        self._fs = gridfs.GridFS(db, collection="blobs")
        self.inline_limit = inline_limit

    def put(self, data: bytes, **metadata: Any) -> dict[str, Any]:
        if len(data) <= self.inline_limit:
            return {"inline": Binary(data), "size": len(data)}
        file_id = self._fs.put(data, metadata=metadata)
        return {"gridfs": file_id, "size": len(data)}

    def get(self, ref: dict[str, Any]) -> bytearray:
        """The payload in one buffer, filled chunk by chunk (GridFS' ``read()`` would join the
        chunks into a second copy of a model-sized payload)."""
        if "inline" in ref:
            return bytearray(ref["inline"])
        stored = self._fs.get(ObjectId(ref["gridfs"]))
        buffer = bytearray(stored.length)
        view = memoryview(buffer)
        filled = 0
        while filled < stored.length:
            chunk = stored.readchunk()
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled != stored.length:
            raise gridfs.errors.CorruptGridFile(f"blob {ref['gridfs']}: {filled} of {stored.length} bytes")
        return buffer

    def delete(self, ref: dict[str, Any]) -> None:
        if "gridfs" in ref:
            self._fs.delete(ObjectId(ref["gridfs"]))
