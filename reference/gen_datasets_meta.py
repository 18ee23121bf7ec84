"""Reference meta.json for the dataset tests (run by hand, not by CI).

Writes crates/ssvp-eval/tests/fixtures/datasets/meta_python.json the way the AnomalyCLIP /
APRIL-GAN MVTec generators do (`json.dumps(info, indent=4) + "\n"`, ensure_ascii on), for the
small MVTec-style tree that crates/ssvp-eval/tests/it/datasets_meta_json.rs builds: non-ASCII
and non-BMP category names, spaces in file names. Masks are named by stem (`<stem>_mask.png`),
which is what the generators' sorted-position pairing yields on a complete tree.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "ssvp-eval", "tests", "fixtures", "datasets", "meta_python.json")

# Must match `fixture_tree()` in crates/ssvp-eval/tests/it/datasets_meta_json.rs.
TREE = {
    "pi\u00e8ce \u2603": {
        "train": {"good": ["000.png", "001 copy.png"]},
        "test": {"good": ["000.png"], "broken_large": ["000.png", "001.png"], "d\u00e9faut \U0001F600": ["010.png"]},
    },
    "bottle": {
        "train": {"good": ["000.png"]},
        "test": {"good": ["000.png", "001.png"], "contamination": ["003.png"]},
    },
}


def main():
    info = dict(train={}, test={})
    for cls_name in sorted(TREE, key=lambda s: s.encode("utf-8")):
        for phase in ["train", "test"]:
            cls_info = []
            for specie in sorted(TREE[cls_name][phase], key=lambda s: s.encode("utf-8")):
                is_abnormal = specie not in ["good"]
                for img_name in sorted(TREE[cls_name][phase][specie]):
                    stem = os.path.splitext(img_name)[0]
                    cls_info.append(dict(
                        img_path=f"{cls_name}/{phase}/{specie}/{img_name}",
                        mask_path=f"{cls_name}/ground_truth/{specie}/{stem}_mask.png" if is_abnormal else "",
                        cls_name=cls_name,
                        specie_name=specie,
                        anomaly=1 if is_abnormal else 0,
                    ))
            info[phase][cls_name] = cls_info
    with open(OUT, "w") as f:
        f.write(json.dumps(info, indent=4) + "\n")


if __name__ == "__main__":
    main()
