"""The web console in a real headless Chromium (Debian's, driven by Selenium through Debian's
chromedriver) against the real API and a real sidecar on the real broker, clicked through
as a person would: log in with a token, open an experiment, read its arms' weights and
statistics, pause it, and the sidecar serves the default arm. A read-only token sees the
actions disabled, and when it tries one anyway the API's refusal is shown with its message."""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.clients import entity_key
from sluice.kafka.io import AvroProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_support import ApiServer, create_token  # noqa: E402
from sidecar_support import Sidecar  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

from tests.integration.test_api_results import weight_table  # noqa: E402

pytestmark = pytest.mark.integration
ENTITY = "site-1"
WAIT_S = 30  # for anything that crosses the broker and the embedded ClickHouse


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, serde, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The API (results on) and a sidecar on one prefix, a write and a read token, and a
    running bandit whose weight table for site-1 (0.2, 0.3, 0.5) is on the weights topic."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    names = TopicNames(prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    writer = create_token(kafka_bootstrap, prefix, "release bot", "write")
    reader = create_token(kafka_bootstrap, prefix, "analyst", "read")
    server = ApiServer(kafka_bootstrap, prefix, tmp_path_factory.mktemp("api"))
    home = tmp_path_factory.mktemp("sidecar")
    sidecar = Sidecar(kafka_bootstrap, prefix, home / "state", home / "sidecar.log")
    try:
        server.wait_ready()
        spec = bandit_spec(f"console-{uuid.uuid4().hex[:6]}", ["a", "b", "c"], description="ranking models")
        status, body, _ = server.request("POST", "/v1/experiments", spec.model_dump(mode="json"), token=writer["secret"])
        assert status == 201, body
        producer = AvroProducer(kafka_bootstrap, serde)
        producer.send(names.weights, entity_key(spec.id, ENTITY), "WeightTable",
                      weight_table(spec, ENTITY, 1, [2000, 3000, 5000], [400, 400, 400], [40, 80, 160],
                                   int(time.time() * 1000)))
        producer.flush()
        sidecar.wait_ready()
        yield {"api": server, "sidecar": sidecar, "writer": writer, "reader": reader, "experiment": spec.id}
    finally:
        sidecar.stop()
        server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver, both from Debian: Selenium is given their paths
    so it downloads nothing. `quit()` stops the driver and the browser it started."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail("chromium or chromedriver is missing: `make tools` installs the Debian packages chromium and "
                    "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for its script errors
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def click(driver: Any, what: str, css: str) -> None:
    """Find and click the element `css`, found again if the page re-rendered it in between:
    the weights table is redrawn every few seconds, and a button of its old rows is stale."""
    def clicked(d: Any) -> bool:
        d.find_element("css selector", css).click()
        return True

    wait_for(driver, what, clicked)


def wait_for(driver: Any, what: str, condition: Any, timeout_s: float = WAIT_S) -> Any:
    """`condition(driver)` once it is truthy; fails naming `what` and the page's message."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        message = driver.find_element("id", "message").text
        raise AssertionError(f"{what} within {timeout_s} s; the page says: {message!r}") from None


def script_errors(driver: Any) -> list[str]:
    """What the page's script threw or the browser refused (a blocked resource, say); the
    API's refusals, which the page shows, are not counted."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource: the server responded with a status of 4" not in e["message"]]


def log_in(driver: Any, url: str, secret: str) -> None:
    driver.get(url + "/")  # redirects to /console/
    field = wait_for(driver, "the login form", lambda d: d.find_element("id", "token"))
    field.send_keys(secret)
    driver.find_element("id", "login").click()


def weights_shown(driver: Any) -> dict[str, str]:
    """Arm -> the weight the page shows for it; empty until the table has landed."""
    rows = driver.find_elements("css selector", "#weights tbody tr")
    shown = {r.get_attribute("data-arm"): r.find_element("css selector", ".weight").text for r in rows}
    return shown if all(w != "–" for w in shown.values()) else {}


def arm_row(driver: Any, arm: str) -> tuple[str, bool]:
    """The text of `arm`'s row in the weights table, and whether its Retire button is enabled."""
    row = driver.find_element("css selector", f'#weights tr[data-arm="{arm}"]')
    return row.text, row.find_element("css selector", ".retire").is_enabled()


def assign(sidecar: Sidecar, experiment: str) -> dict[str, Any]:
    status, body = sidecar.request("POST", "/v1/assign", {"experiment": experiment, "unit_id": "u-7", "entity": ENTITY})
    assert status == 200, body
    return body


def sidecar_answers(sidecar: Sidecar, experiment: str, source: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while (answer := assign(sidecar, experiment))["source"] != source:
        assert time.monotonic() < deadline, f"the sidecar still answers {answer} after {WAIT_S} s, not source {source!r}"
        time.sleep(0.05)
    return answer


def test_a_writer_pauses_an_experiment_in_the_console_and_the_sidecar_serves_the_default_arm(stack, browser) -> None:
    api, sidecar, experiment = stack["api"], stack["sidecar"], stack["experiment"]
    assert sidecar_answers(sidecar, experiment, "table")["weights_version"] == 1

    log_in(browser, api.url, stack["writer"]["secret"])
    link = wait_for(browser, "the experiments list", lambda d: d.find_element(
        "css selector", f'#experiments tr[data-experiment="{experiment}"] a'))
    assert "release bot" in browser.find_element("id", "who").text
    link.click()

    entity = wait_for(browser, "the experiment page", lambda d: d.find_element("id", "entity"))
    assert browser.find_element("id", "status").text == "running"
    entity.send_keys(ENTITY)
    browser.find_element("id", "show-entity").click()
    weights = wait_for(browser, "the weight table of site-1", weights_shown)
    assert weights == {"a": "0.200", "b": "0.300", "c": "0.500"}
    p_best = wait_for(browser, "the statistics", lambda d: {
        r.get_attribute("data-arm"): r.find_elements("tag name", "td")[4].text
        for r in d.find_elements("css selector", "#statistics tbody tr")})
    assert list(p_best) == ["a", "b", "c"] and float(p_best["c"].split()[0]) > 99, p_best
    plots = wait_for(browser, "the plots", lambda d: [len(d.find_elements("css selector", f"#{plot} {mark}"))
                                                      for plot, mark in [("p-best-plot", "rect"), ("regret-plot", "rect"),
                                                                         ("interval-plot", "circle"),
                                                                         ("p-best-history", "circle")]])
    assert plots == [3, 3, 3, 3]  # per arm: a bar, a bar, an interval, and one point of the one table so far

    pause = browser.find_element("id", "pause")
    assert pause.is_enabled() and not browser.find_element("id", "resume").is_enabled()
    pause.click()
    wait_for(browser, "the page showing the experiment paused",
             lambda d: d.find_element("id", "status").text == "paused")
    assert browser.find_element("id", "resume").is_enabled() and not browser.find_element("id", "pause").is_enabled()

    served = sidecar_answers(sidecar, experiment, "default")
    assert served["arm"] == "a"  # the spec's default arm, for every unit while paused
    status, body, _ = api.request("GET", f"/v1/experiments/{experiment}", token=stack["writer"]["secret"])
    assert (status, body["status"]) == (200, "paused")

    # Retire arm b for this entity only, from its row in the weights table.
    click(browser, "the retire button of arm b", '#weights tr[data-arm="b"] .retire')
    wait_for(browser, "the retirement confirmed", lambda d: "arm b: retire done" in d.find_element("id", "message").text)
    text, can_retire = wait_for(browser, "arm b shown retired",
                                lambda d: row if "retired" in (row := arm_row(d, "b"))[0] else None)
    assert text.startswith("b retired") and not can_retire
    status, body, _ = api.request("GET", f"/v1/experiments/{experiment}", token=stack["writer"]["secret"])
    assert [(r["arm"], r["entity"]) for r in body["health"]["retired"]] == [("b", ENTITY)]
    assert script_errors(browser) == []


def test_a_read_only_token_sees_the_actions_disabled_and_the_apis_refusal(stack, browser) -> None:
    api, experiment = stack["api"], stack["experiment"]
    log_in(browser, api.url, "sluice_not_a_token")
    wait_for(browser, "the refusal of a bad token", lambda d: "401" in d.find_element("id", "message").text)
    assert browser.find_element("id", "token").is_displayed()

    log_in(browser, api.url, stack["reader"]["secret"])
    wait_for(browser, "the experiments list", lambda d: d.find_elements("css selector", "#experiments tbody tr"))
    browser.get(f"{api.url}/console/#/experiments/{experiment}?entity={ENTITY}")
    wait_for(browser, "the weight table of site-1", weights_shown)
    enabled = wait_for(browser, "the actions", lambda d: [
        b.is_enabled() for b in d.find_elements("css selector", "#pause, #resume, #stop, #weights button")])
    assert enabled == [False] * (3 + 2 * 3)  # pause, resume, stop, and retire and reinstate of each arm
    assert "scope read" in browser.find_element("id", "who").text

    # The as-of form: a minute from now gives the table in force; a day ago, the API's 404.
    def weights_as_of(minutes: int) -> None:
        at = datetime.fromtimestamp(time.time() + 60 * minutes, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M")
        browser.execute_script("document.getElementById('as-of-at').value = arguments[0]", at)
        browser.find_element("id", "as-of-show").click()

    weights_as_of(1)
    shown = wait_for(browser, "the weights as of a minute from now", lambda d: {
        r.get_attribute("data-arm"): r.find_element("css selector", ".weight").text
        for r in d.find_elements("css selector", "#as-of-weights tbody tr")})
    assert shown == {"a": "0.200", "b": "0.300", "c": "0.500"}
    weights_as_of(-24 * 60)
    refusal = wait_for(browser, "the refusal of a moment before any table",
                       lambda d: "404" in (text := d.find_element("id", "as-of-result").text) and text)
    assert "was computed at or before" in refusal

    # The page only reflects the scope; the API decides. Forced on, the button gets a 403,
    # and the page shows the API's own words.
    # Enabled and clicked in one script: the page's refresh, which disables it again, cannot
    # come in between.
    browser.execute_script("const stop = document.getElementById('stop'); stop.disabled = false; stop.click()")
    message = wait_for(browser, "the refusal shown", lambda d: d.find_element("id", "message").text)
    assert "403" in message and "scope read; this route needs write" in message
    assert api.request("GET", f"/v1/experiments/{experiment}", token=stack["reader"]["secret"])[1]["status"] != "stopped"
    assert script_errors(browser) == []
