"""The console's pages over a home built from real records (SQLite) with no chain:
empty states that say what to run, a home with many tasks, bad input (unknown home,
task, action; a decision taken twice), the CLI's refusals, and the demo homes it shows.
The browser and the live chain are in test_console_browser.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from agentmesh.agents.records import AgentRecords
from agentmesh.cli.app import app
from agentmesh.cli.console.app import create_app
from agentmesh.cli.console.homes import demo_home, homes, pick
from agentmesh.cli.console.security import csrf_value
from agentmesh.protocols.negotiation import Phase, Role, TaskStatus

TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def client(home: Path) -> TestClient:
    return TestClient(create_app(home, TOKEN, port=1, hosts=["testserver"]))


def add_tasks(home: Path, agent: str, count: int) -> AgentRecords:
    records = AgentRecords(home / "agents" / agent / "agent.db")
    for n in range(count):
        tid = Role.REQUESTER.task_id(f"{n:032x}")
        records.start_task(tid, Role.REQUESTER, "summarize")
        records.update_task(tid, state=Phase.SETTLED, status=TaskStatus.DONE, price=50_000)
    return records


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/", "agentmesh demo"),
        ("/tasks", "agentmesh demo"),
        ("/mesh", "mesh serve"),
        ("/approvals", "approval_threshold"),
        ("/channels", "agentmesh demo channels"),
        ("/delegations", "agentmesh demo defi"),
        ("/validators", "agentmesh demo validation"),
    ],
)
def test_an_empty_home_says_what_to_run_on_each_page(tmp_path: Path, path: str, says: str) -> None:
    page = client(tmp_path).get(path, headers=AUTH)
    assert page.status_code == 200
    assert says in page.text


def test_the_task_list_shows_every_task_and_the_api_the_same_rows(tmp_path: Path) -> None:
    add_tasks(tmp_path, "buyer", 1_000).close()
    http = client(tmp_path)
    page = http.get("/tasks", headers=AUTH)
    assert page.status_code == 200 and page.text.count('data-status="done"') == 1_000
    rows = http.get("/api/tasks", headers=AUTH).json()
    assert len(rows["tasks"]) == 1_000 and rows["counts"] == {"done": 1_000}
    assert rows["tasks"][0]["price_text"] == "0.05 mUSD"
    # A live refresh asks for the content only, with the version it shows.
    fragment = http.get("/tasks", headers={**AUTH, "x-console-fragment": "1"})
    assert "<header>" not in fragment.text and 'data-status="done"' in fragment.text
    assert fragment.headers["x-console-version"]


def test_bad_requests_get_a_clear_error_and_change_nothing(tmp_path: Path) -> None:
    records = add_tasks(tmp_path, "buyer", 1)
    approval = records.request_approval(Role.REQUESTER.task_id("0" * 32), 70_000, "buy it")
    http = client(tmp_path)
    unknown = http.get("/tasks?home=nope", headers=AUTH)
    assert unknown.status_code == 404 and "no home &#39;nope&#39;" in unknown.text
    assert http.get("/tasks/buyer/zz-not-hex", headers=AUTH).status_code == 404
    assert http.get("/tasks/nobody/" + "0" * 32, headers=AUTH).status_code == 404
    missing = http.get("/api/tasks/buyer/" + "f" * 32, headers=AUTH)
    assert missing.status_code == 404 and "no such task" in missing.json()["error"]
    good = {"csrf": csrf_value(TOKEN)}
    odd = http.post(f"/approvals/{approval.id}/destroy", data=good, headers=AUTH)
    assert odd.status_code == 404 and "approve or reject" in odd.text
    ghost = http.post("/api/approvals/0000000000/approve", headers=AUTH)
    assert ghost.status_code == 409 and "unknown approval id" in ghost.json()["error"]
    assert records.approvals("pending")[0].id == approval.id  # nothing decided
    assert http.get("/events?scope=everything", headers=AUTH).status_code == 400
    done = http.post(f"/api/approvals/{approval.id}/reject", headers=AUTH)
    assert done.json()["status"] == "rejected"
    twice = http.post(f"/api/approvals/{approval.id}/approve", headers=AUTH)
    assert twice.status_code == 409 and "already rejected" in twice.json()["error"]
    # The page's notice comes from the record it names, never from the address.
    shown = http.get(f"/approvals?decided={approval.id}", headers=AUTH).text
    assert f"rejected {approval.id}: buy it" in shown
    crafted = http.get("/approvals?decided=nope&notice=approved+everything", headers=AUTH)
    assert 'id="notice"' not in crafted.text and "everything" not in crafted.text
    assert http.get("/tasks/.hidden/" + "0" * 32, headers=AUTH).status_code == 404
    records.close()


def test_a_token_in_the_address_is_swapped_for_a_cookie(tmp_path: Path) -> None:
    http = client(tmp_path)
    first = http.get(f"/tasks?home=&token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/tasks?home="
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert http.get("/tasks?home=").status_code == 200  # the cookie is enough now
    assert client(tmp_path).get("/tasks").status_code == 401  # another client has none


def test_the_demo_homes_are_shown_and_the_running_one_is_the_default(tmp_path: Path) -> None:
    folder = demo_home(tmp_path, "market")
    add_tasks(folder, "buyer", 2).close()
    assert [h.key for h in homes(tmp_path)] == ["", "market"]
    assert pick(tmp_path, None).key == "market"  # the one whose agents changed last
    assert pick(tmp_path, "").path == tmp_path
    assert demo_home(tmp_path, "market") == folder and not (folder / "agents").exists()
    with pytest.raises(Exception, match="invalid demo name"):
        demo_home(tmp_path, "../x")


def test_the_cli_refuses_an_exposed_or_wildcard_address(tmp_path: Path) -> None:
    def ui(*args: str) -> str:
        result = CliRunner().invoke(app, ["--home", str(tmp_path), "ui", *args])
        assert result.exit_code == 1
        return str(result.exception)

    assert "--expose" in ui("--host", "10.1.2.3")
    assert "listens on every address" in ui("--host", "0.0.0.0", "--expose")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert "cannot listen on 127.0.0.1" in ui("--port", str(taken.getsockname()[1]))


def test_actions_need_the_form_value_and_this_origin(tmp_path: Path) -> None:
    records = add_tasks(tmp_path, "buyer", 1)
    approval = records.request_approval(Role.REQUESTER.task_id("0" * 32), 70_000, "buy it")
    http = client(tmp_path)
    http.get(f"/?token={TOKEN}")  # a browser: the cookie, no bearer
    act = f"/approvals/{approval.id}/approve"
    assert http.post(act, data={}).status_code == 403  # no CSRF value
    assert http.post(act, data={"csrf": "forged"}).status_code == 403
    good = {"csrf": csrf_value(TOKEN)}
    other = http.post(act, data=good, headers={"origin": "http://evil.example"})
    assert other.status_code == 403 and "evil.example" in other.text
    assert http.post(act, data=good, headers={"sec-fetch-site": "cross-site"}).status_code == 403
    assert http.get("/api/tasks", headers={"host": "evil.example"}).status_code == 421
    assert [a.id for a in records.approvals("pending")] == [approval.id]  # none decided
    same = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}
    done = http.post(act, data=good, headers=same, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].endswith(f"decided={approval.id}")
    assert records.approvals("approved")[0].id == approval.id
    records.close()


def test_text_from_peers_and_records_is_escaped(tmp_path: Path) -> None:
    from agentmesh.cli.console.svg import peer_graph

    hostile = '</title><script>alert("x")</script>'
    drawn = str(peer_graph([{"address": "0x1", "name": hostile, "state": "up"}], []))
    assert "<script>" not in drawn and "&lt;script&gt;" in drawn
    records = add_tasks(tmp_path, "buyer", 1)
    records.request_approval(Role.REQUESTER.task_id("1" * 32), 70_000, hostile)
    records.close()
    page = client(tmp_path).get("/approvals", headers=AUTH).text
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


def test_pages_read_the_home_without_changing_it(tmp_path: Path) -> None:
    import sqlite3

    from agentmesh.cli.console.homes import version

    add_tasks(tmp_path, "buyer", 3).close()
    db = tmp_path / "agents" / "buyer" / "agent.db"
    with sqlite3.connect(db) as raw:  # as an older agentmesh left it
        raw.execute("DROP TABLE attempts")
    http = client(tmp_path)
    for path in ("/", "/tasks", "/approvals", "/mesh", "/channels", "/delegations"):
        assert http.get(path + "?home=", headers=AUTH).status_code == 200
    seen = version(tmp_path, "", "all")[1]
    for _ in range(3):  # nothing changed: no refresh is due
        http.get("/tasks?home=", headers=AUTH)
        http.get("/?home=", headers=AUTH)
        assert version(tmp_path, "", "all")[1] == seen
    with sqlite3.connect(db) as raw:  # no table was added back by a reader
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
    assert "attempts" not in tables and "tasks" in tables
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agents"]  # no file made here
