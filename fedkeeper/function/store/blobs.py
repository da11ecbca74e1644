"""Binary payloads stored inline up to a threshold and in GridFS beyond it.

MongoDB rejects documents over 16 MB, so anything over 15 MB goes to GridFS automatically and
the document keeps only a reference.
"""

from __future__ import annotations

from typing import Any

import gridfs
from bson import Binary, ObjectId
from pymongo import ASCENDING
from pymongo.database import Database

INLINE_LIMIT = 15 * 1024 * 1024
# GridFS chunks (255 KiB each) per reply when a blob is read: ~2 MB in flight, not 16 MB.
CHUNK_BATCH = 8


class BlobStore:
    """Put and get byte strings; a blob reference is a small dict to embed in a document."""

    def __init__(self, db: Database, inline_limit: int = INLINE_LIMIT) -> None:
        self._fs = gridfs.GridFS(db, collection="blobs")
        self._chunks = db["blobs.chunks"]
        self.inline_limit = inline_limit

    def put(self, data: bytes, **metadata: Any) -> dict[str, Any]:
        if len(data) <= self.inline_limit:
            return {"inline": Binary(data), "size": len(data)}
        file_id = self._fs.put(data, metadata=metadata)
        return {"gridfs": file_id, "size": len(data)}

    def get(self, ref: dict[str, Any]) -> bytearray:
        """The payload in one buffer, filled chunk by chunk as MongoDB sends them, a few at a time
        (GridFS' ``read()`` asks for 16 MB batches and joins the chunks into a second copy)."""
        if "inline" in ref:
            return bytearray(ref["inline"])
        file_id = ObjectId(ref["gridfs"])
        buffer = bytearray(int(ref["size"]))
        view = memoryview(buffer)
        filled = 0
        chunks = self._chunks.find({"files_id": file_id}, {"_id": 0, "data": 1}, batch_size=CHUNK_BATCH)
        for chunk in chunks.sort("n", ASCENDING):
            data = chunk["data"]
            end = filled + len(data)
            if end > len(buffer):
                break
            view[filled:end] = data
            filled = end
        else:
            if filled == len(buffer):
                return buffer
        raise gridfs.errors.CorruptGridFile(
            f"blob {file_id}: its chunks do not add up to {len(buffer)} bytes"
        )

    def delete(self, ref: dict[str, Any]) -> None:
        if "gridfs" in ref:
            self._fs.delete(ObjectId(ref["gridfs"]))
