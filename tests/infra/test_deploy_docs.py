"""infra/DEPLOY.md against the files it deploys: its "fill these in" table names every placeholder where it
appears, its commands name files that exist, and IRSA's trust policy trusts exactly the manifests' service
accounts in the manifests' namespace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "DEPLOY.md"
KUBERAY = ROOT / "infra" / "kuberay"
IRSA_TRUST = ROOT / "infra" / "aws" / "rsclip-irsa-trust-policy.json"
# Files a platform engineer edits: the launcher's config, the IAM policies and the manifests.
DEPLOYED = [ROOT / "cluster.yaml", *sorted((ROOT / "infra" / "aws").glob("*.json")), *sorted(KUBERAY.glob("*.yaml"))]
# What a placeholder looks like in them, whatever the table says: account ids, example buckets, OIDC ids.
PLACEHOLDER_SHAPES = re.compile(r"\b\d{12}\b|\bmy-[a-z]+\b|EXAMPLE[0-9A-F]+EXAMPLE")
NAMESPACE_ROW = "rsclip"


def table_rows(text: str) -> dict[str, set[str]]:
    """``{placeholder: {files named in its "where" cell}}`` of the "Fill these in" table."""
    section = text.split("## 0. Fill these in", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        placeholder = re.match(r"`([^`]+)`", cells[0]).group(1)
        rows[placeholder] = set(re.findall(r"`((?:cluster\.yaml|infra/)[^`]*)`", cells[2]))
    return rows


def files_holding(value: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in DEPLOYED if value in p.read_text()}


def table_problems(rows: dict[str, set[str]]) -> list[str]:
    """Rows whose "where" is not exactly the files that hold the placeholder, and placeholder-shaped values in
    the files that no row names."""
    problems = [f"{value}: table says {sorted(where)}, found in {sorted(files_holding(value))}"
                for value, where in rows.items() if value != NAMESPACE_ROW and where != files_holding(value)]
    for path in DEPLOYED:
        for found in set(PLACEHOLDER_SHAPES.findall(path.read_text())):
            if not any(found in value for value in rows):
                problems.append(f"{path.relative_to(ROOT)}: {found} is in no row of the table")
    return problems


def test_the_fill_in_table_names_every_placeholder_where_it_is():
    rows = table_rows(DEPLOY.read_text())
    assert {"123456789012", "us-west-2", "my-archive", "my-tables", NAMESPACE_ROW} <= set(rows)
    assert table_problems(rows) == []


def test_the_table_check_can_fail():
    rows = table_rows(DEPLOY.read_text())
    rows["123456789012"] = rows["123456789012"] - {"cluster.yaml"}
    del rows["my-runs"]
    problems = table_problems(rows)
    assert any(p.startswith("123456789012") for p in problems)
    assert any("my-runs is in no row" in p for p in problems)


def test_every_file_the_commands_name_exists():
    text = DEPLOY.read_text()
    named = set(re.findall(r"file://(\S+)", text)) | set(re.findall(r"-f (infra/\S+)", text))
    assert len(named) >= 6
    assert [n for n in named if not (ROOT / n).is_file()] == []


def manifests() -> list[dict]:
    return [d for p in sorted(KUBERAY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def test_irsa_trusts_the_manifests_service_accounts_in_their_namespace():
    namespace = next(d["metadata"]["name"] for d in manifests() if d["kind"] == "Namespace")
    assert {d["metadata"].get("namespace") for d in manifests() if d["kind"] != "Namespace"} == {namespace}
    accounts = {d["metadata"]["name"] for d in manifests() if d["kind"] == "ServiceAccount"}
    (statement,) = json.loads(IRSA_TRUST.read_text())["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    provider = statement["Principal"]["Federated"].split(":oidc-provider/", 1)[1]
    conditions = statement["Condition"]["StringEquals"]
    assert conditions[f"{provider}:aud"] == "sts.amazonaws.com"
    assert set(conditions[f"{provider}:sub"]) == {f"system:serviceaccount:{namespace}:{a}" for a in accounts}


def test_the_pods_role_is_the_one_the_docs_create_with_the_oidc_trust():
    roles = {d["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].rsplit("/", 1)[1]
             for d in manifests() if d["kind"] == "ServiceAccount"}
    text = DEPLOY.read_text()
    for role in roles:
        assert re.search(rf"--role-name {role} \\\s+--assume-role-policy-document file://{IRSA_TRUST.relative_to(ROOT)}",
                         text), role
