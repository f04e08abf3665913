"""A labeled task and a pretraining corpus from a real documentation tree: the Linux kernel's (Debian package
linux-doc-6.1). Which part of the documentation does a paragraph come from? networking, filesystems, process,
trace or sound: five topics, balanced.

    apt-get download linux-doc-6.1 && dpkg -x linux-doc-6.1_*.deb /tmp/linux-doc
    python benchmarks/tasks/linux_doc.py --package /tmp/linux-doc --output /tmp/linux-doc-task

Writes OUTPUT/corpus/*.txt (every prose paragraph of the tree, the eval paragraphs left out; a source file is a
document, a paragraph a line, blank lines between documents) and OUTPUT/task/{train,dev}.tsv (sentence<TAB>label). Paragraphs are the
blank-line-separated blocks of the reStructuredText sources that read as prose: not indented (code, literal
blocks), not directives, headings, tables or lists of symbols, 80 to 600 characters, mostly letters.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
from pathlib import Path

TOPICS = ("networking", "filesystems", "process", "trace", "sound")
_MARKUP = re.compile(r"^(\.\.|::|\||\+[-=]|[=\-~^#*]{3,}|:\w+:)")


def prose_paragraphs(text: str) -> list[str]:
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not lines or any(line[:1] in (" ", "\t") for line in lines) or any(_MARKUP.match(l) for l in lines):
            continue
        paragraph = " ".join(" ".join(lines).split())  # inner tabs too: the task is a TSV
        letters = sum(c.isalpha() or c == " " for c in paragraph)
        if 80 <= len(paragraph) <= 600 and letters >= 0.85 * len(paragraph):
            paragraphs.append(paragraph)
    return paragraphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, help="where linux-doc-6.1 was unpacked (dpkg -x)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--train-per-topic", type=int, default=400)
    parser.add_argument("--eval-per-topic", type=int, default=200)
    args = parser.parse_args()
    root = next(Path(args.package).glob("usr/share/doc/linux-doc-*/Documentation"))
    by_topic: dict[str, list[str]] = {}
    documents: list[list[str]] = []  # one per source file, a paragraph a line
    for path in sorted(root.rglob("*.rst.gz")):
        parts = path.relative_to(root).parts
        if parts[0] == "translations":
            continue
        paragraphs = prose_paragraphs(gzip.decompress(path.read_bytes()).decode("utf-8", "replace"))
        documents.append(paragraphs)
        if parts[0] in TOPICS:
            by_topic.setdefault(parts[0], []).extend(paragraphs)
    rng = random.Random(0)
    train, evaluation = [], []
    for topic in TOPICS:
        unique = sorted(set(by_topic[topic]))
        rng.shuffle(unique)
        evaluation += [(p, topic) for p in unique[: args.eval_per_topic]]
        train += [(p, topic) for p in unique[args.eval_per_topic: args.eval_per_topic + args.train_per_topic]]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    held_out = {p for p, _ in evaluation}
    # Each source file is a document with a paragraph a line: `electra prepare` packs a document's sentences
    # together, while paragraphs as documents would each make a mostly padded sequence of their own.
    corpus = ["\n".join(p for p in paragraphs if p not in held_out) for paragraphs in documents]
    corpus = [document for document in corpus if document]
    output = Path(args.output)
    (output / "corpus").mkdir(parents=True, exist_ok=True)
    (output / "task").mkdir(parents=True, exist_ok=True)
    per_file = -(-len(corpus) // 8)
    for index in range(8):
        (output / "corpus" / f"linux-doc-{index}.txt").write_text("\n\n".join(corpus[index * per_file:(index + 1) * per_file]) + "\n")
    for name, rows in (("train", train), ("dev", evaluation)):
        (output / "task" / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{p}\t{t}\n" for p, t in rows))
    sizes = {t: len(set(by_topic[t])) for t in TOPICS}
    print(f"{len(corpus):,} corpus documents ({sum(map(len, corpus)) / 1e6:.1f} M characters); paragraphs per topic "
          f"{sizes}; {len(train)} train, {len(evaluation)} eval -> {output}")


if __name__ == "__main__":
    main()
