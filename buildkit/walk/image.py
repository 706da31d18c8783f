"""Container images: an OCI image layout (oci-layout, index.json, blobs/) or a `docker save` archive
(manifest.json naming each image's config and layer tars). The tree is the image's file system:
its layers unpacked in order into one root, whiteouts honoured (OCI image-spec, layer.md:
`.wh.NAME` hides NAME of the layers below, `.wh..wh..opq` everything below in its directory)."""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from buildkit.errors import UserError
from buildkit.walk.formats import MAX_IMAGE_JSON, TAR, content_kind, corrupt_archive_errors, image_layout, reason
from buildkit.walk.tree import ArtifactTree, ExtractBudget, Limits, Member, printable, read_link, resolve_in_tree
from buildkit.walk.unpack import Extractor, read_tar

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
MAX_INDEX_DEPTH = 4  # an index may name another index (a multi-platform image in a layout)
UNKNOWN_PLATFORM = "unknown/unknown"  # buildx's attestation manifests
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


def image_tree(
    source: Path, workdir: Path, shown: str, budget: ExtractBudget, platforms: Sequence[str]
) -> ArtifactTree:
    try:
        if image_layout(source) == "oci":
            config, layers = _oci_image(source, shown, platforms)
        else:
            config, layers = _docker_image(source, shown)
        platform = _platform_of(_image_json(source, config, shown))
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{shown}: not a valid container image ({reason(exc)} missing or malformed)") from None
    root = workdir / "fs"
    root.mkdir()
    extractor = _LayerExtractor(root, shown, Limits.from_env(), budget)
    for layer in layers:
        path = _image_file(source, layer, shown)
        kind = content_kind(path)
        extractor.begin_layer()
        try:
            read_tar(path, kind if kind is not None and kind.tar_stream is not None else TAR, extractor)
        except corrupt_archive_errors() as exc:
            raise UserError(f"{shown}: layer {layer} is not a readable tar archive ({reason(exc)})") from None
    return replace(extractor.finish(), platform=platform)


def _oci_image(source: Path, shown: str, platforms: Sequence[str]) -> tuple[str, list[str]]:
    document = _image_json(source, "index.json", shown)
    for _ in range(MAX_INDEX_DEPTH):
        if document.get("mediaType") not in _INDEX_TYPES and "manifests" not in document:
            return _blob(document["config"]["digest"]), [_blob(layer["digest"]) for layer in document["layers"]]
        document = _image_json(source, _blob(_chosen_manifest(document, shown, platforms)["digest"]), shown)
    raise UserError(f"{shown}: image indexes nested more than {MAX_INDEX_DEPTH} deep")


def _chosen_manifest(index: dict, shown: str, platforms: Sequence[str]) -> dict:
    """The one image of an index, or of a multi-platform index the first of `platforms` it holds."""
    entries = [m for m in index["manifests"] if _platform_of(m.get("platform") or {"os": "-"}) != UNKNOWN_PLATFORM]
    if len(entries) == 1:
        return entries[0]
    held = {_platform_of(m.get("platform") or {}): m for m in entries}
    chosen = next((held[p] for p in platforms if p in held), None)
    if chosen is None:
        raise UserError(
            f"{shown}: an image index of {len(entries)} images ({', '.join(sorted(held)) or 'no platforms'}) "
            f"and none for {' or '.join(platforms) or 'the target'}: give the image for the board"
        )
    return chosen


def _docker_image(source: Path, shown: str) -> tuple[str, list[str]]:
    images = _image_json(source, "manifest.json", shown, list)
    if len(images) != 1:
        raise UserError(f"{shown}: a docker save archive of {len(images)} images: save one image per archive")
    return str(images[0]["Config"]), [str(layer) for layer in images[0]["Layers"]]


def _platform_of(document: dict) -> str:
    """os/architecture[/variant], as `docker run --platform` spells it."""
    parts = [str(document.get("os") or "unknown"), str(document.get("architecture") or "unknown")]
    return "/".join(parts + ([str(document["variant"])] if document.get("variant") else []))


def _blob(digest: object) -> str:
    match = _DIGEST.fullmatch(str(digest))
    if match is None:
        raise KeyError(f"digest {printable(str(digest))[:80]!r}")
    return f"blobs/sha256/{match.group(1)}"


def _image_file(source: Path, rel: str, shown: str) -> Path:
    """A file the image names, looked up inside the image's tree only."""
    canonical = resolve_in_tree(rel, lambda p: read_link(source / p))
    path = source / canonical if canonical else None
    if path is None or not path.is_file() or path.is_symlink():
        raise UserError(f"{shown}: the image names {printable(rel)}, which it does not hold")
    return path


def _image_json(source: Path, rel: str, shown: str, kind: type = dict) -> Any:
    path = _image_file(source, rel, shown)
    if path.stat().st_size > MAX_IMAGE_JSON:
        raise UserError(f"{shown}: {printable(rel)} is larger than {MAX_IMAGE_JSON} bytes: not an image document")
    try:
        document = json.loads(path.read_bytes())
    except ValueError as exc:
        raise UserError(f"{shown}: {printable(rel)} is not JSON ({reason(exc)})") from None
    if not isinstance(document, kind):
        raise UserError(f"{shown}: {printable(rel)} is not a JSON {kind.__name__}")
    return document


class _LayerExtractor(Extractor):
    """Layers unpacked one over another: a later layer replaces what a lower one had at a path
    (whatever the types), and its whiteouts remove what the lower layers had."""

    def begin_layer(self) -> None:
        self.this_layer: set[str] = set()

    def add(self, member: Member, read: Callable[[], IO[bytes]] | None = None) -> None:
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        rel = "/".join(parts)
        if ".." in parts or member.name.startswith("/") or not parts:
            super().add(member, read)  # reported there
            return
        parent, name = "/".join(parts[:-1]), parts[-1]
        if name == OPAQUE_WHITEOUT:
            self._hide_lower(parent, only_below=True)
            return
        if name.startswith(WHITEOUT_PREFIX):
            self._hide_lower(posixpath.join(parent, name[len(WHITEOUT_PREFIX) :]))
            return
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if above in self.links or self.entries.get(above) == "file":
                self._hide_lower(above)
        existing = "symlink" if rel in self.links else self.entries.get(rel)
        if existing is not None and not (existing == "dir" and member.kind == "dir"):
            self._hide_lower(rel)
        super().add(member, read)
        self.this_layer.add(rel)

    def _hide_lower(self, rel: str, only_below: bool = False) -> None:
        """Remove what the layers below have at `rel` (or only under it), never this layer's own."""
        if not only_below:
            if rel in self.this_layer or (rel not in self.links and rel not in self.entries):
                return
            if rel in self.links:
                del self.links[rel]
                return
            if self.entries[rel] == "file":  # the common case, a file a later layer replaces: no scan
                del self.entries[rel]
                os.unlink(self.root / rel)
                return
        prefix = f"{rel}/" if rel else ""
        doomed = [
            p
            for p in [*self.entries, *self.links]
            if p not in self.this_layer and ((p == rel and not only_below) or p.startswith(prefix) and p != rel)
        ]
        for path in sorted(doomed, key=lambda p: p.count("/"), reverse=True):
            if path in self.links:
                del self.links[path]
            elif self.entries[path] == "file":
                del self.entries[path]
                os.unlink(self.root / path)
            elif not any(p.startswith(f"{path}/") for p in [*self.entries, *self.links]):
                del self.entries[path]
                self.dir_modes.pop(path, None)
                os.rmdir(self.root / path)
