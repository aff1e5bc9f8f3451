"""Visualized-BGE on Milvus Lite: one collection of image vectors, searched by text, by image and by image+text.

    python examples/milvus_multimodal.py --model Visualized_base_en_v1.5.pth --text-model BAAI/bge-base-en-v1.5 \\
        --images ./photos --query "a red dress" --image-query ./photos/dress.jpg --modifier "the same dress in blue"

Every image file in ``--images`` becomes one row (its path is the primary key: run it twice, the collection
keeps one row per image). Three searches follow: the text ``--query`` against the images; the image
``--image-query`` (default: the first image) against the images; and that image together with the text
``--modifier`` (a composed query). With ``--reranker``, the text search's hits are reranked by their file
names with a cross-encoder. Any Milvus server works too: ``--uri http://localhost:19530``.

Needs: pip install 'bge-plugins[milvus]' pillow; the Visualized-BGE weights from BAAI/bge-visualized.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pymilvus import DataType, MilvusClient

from bge_core import Embedder, Reranker

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def image_files(folder: str) -> list[str]:
    """The image files of `folder`, sorted by name."""
    return sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def create_collection(client: MilvusClient, name: str, dim: int) -> None:
    """A collection keyed by image path with one normalised vector per image (inner product = cosine)."""
    if client.has_collection(name):
        return
    schema = client.create_schema(auto_id=False)
    schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=1024)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index)


def search(client: MilvusClient, name: str, vector: list[float], k: int) -> list[tuple[str, float]]:
    """(path, score) of the `k` nearest images."""
    hits = client.search(name, data=[vector], anns_field="vector", limit=k, output_fields=["path"],
                         search_params={"metric_type": "IP"})[0]
    return [(hit["entity"]["path"], float(hit["distance"])) for hit in hits]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Visualized_base_en_v1.5.pth", help="Visualized-BGE .pth file")
    parser.add_argument("--text-model", default="BAAI/bge-base-en-v1.5", help="its BGE model: hub id or directory")
    parser.add_argument("--reranker", default=None, help="optional cross-encoder (hub id or directory)")
    parser.add_argument("--images", default="./images", help="folder of images to index")
    parser.add_argument("--uri", default="./milvus_multimodal.db", help="Milvus Lite file or Milvus server URI")
    parser.add_argument("--device", default=None, help="cpu, cuda… (default: first GPU, else CPU)")
    parser.add_argument("--query", default="a photo of a dog", help="text query")
    parser.add_argument("--image-query", default=None, help="image query (default: the first indexed image)")
    parser.add_argument("--modifier", default="in bright colours", help="text sent with the image query")
    parser.add_argument("-k", type=int, default=3, help="hits per search")
    args = parser.parse_args(argv)

    model = Embedder(args.model, text_model=args.text_model, device=args.device)
    paths = image_files(args.images)
    if not paths:
        parser.error(f"no image files in {args.images}")
    client = MilvusClient(args.uri)
    name = "visualized_bge_example"
    create_collection(client, name, model.dim)
    vectors = model.encode_images(paths).dense
    client.upsert(name, [{"path": p, "vector": v.tolist()} for p, v in zip(paths, vectors)])
    print(f"{client.get_collection_stats(name)['row_count']} rows in {args.uri}")

    image_query = args.image_query or paths[0]
    results = {
        f"text: {args.query}": search(client, name, model.encode([args.query]).dense[0].tolist(), args.k),
        f"image: {image_query}": search(client, name, model.encode_images([image_query]).dense[0].tolist(), args.k),
        f"image + text: {image_query} + {args.modifier}": search(
            client, name, model.encode_multimodal([image_query], [args.modifier]).dense[0].tolist(), args.k),
    }
    if args.reranker:
        hits = results[f"text: {args.query}"]
        names = [Path(p).stem.replace("_", " ") for p, _ in hits]
        order = Reranker(args.reranker, device=args.device).rerank(args.query, names)
        results[f"text, reranked by file name: {args.query}"] = [(hits[h.index][0], h.score) for h in order]
    client.close()
    for title, hits in results.items():
        print(f"\n{title}")
        for rank, (path, score) in enumerate(hits, start=1):
            print(f"  {rank}. {score:8.4f}  {os.path.basename(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
