"""Print the direct runs-table link of every experiment in an MLflow store (``make mlflow-ui``).

MLflow 3's UI opens an experiment on its GenAI overview; these links open the runs table.

    python scripts/mlflow_ui_links.py --tracking-uri sqlite:////abs/results/mlflow.db --port 5000
"""

from __future__ import annotations

import argparse

from bifrepro.tracking import runs_table_urls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="e.g. sqlite:////abs/path/mlflow.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    urls = runs_table_urls(args.tracking_uri, args.host, args.port)
    print(f"MLflow runs tables ({args.tracking_uri}):")
    width = max((len(name) for name in urls), default=0)
    for name, url in urls.items():
        print(f"  {name:<{width}}  {url}")
    if not urls:
        print("  (no experiments yet)")


if __name__ == "__main__":
    main()
