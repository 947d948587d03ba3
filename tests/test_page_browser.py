"""The page in a real headless Chromium, driven through WebDriver, against uvicorn on a free
port serving the app over a real SQLite store and records database: sign in, see the fleet,
acknowledge an alarm, start and complete a work order. Screenshots of each step are kept under
test-artifacts/page/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from core.db import Alarm, WorkOrder, WorkOrderDraft
from core.net import free_port
from core.records import Reading
from tests.support import require_binary, wait_for
from tests.test_api_support import NOW, ApiEnv, api_env

_T = TypeVar("_T")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "page"
WAIT = 15.0


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    chromium = require_binary("chromium", "chromium")
    chromedriver = require_binary("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        # as root in a container Chromium's sandbox cannot start
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ApiEnv, str]]:
    """The app on a free loopback port, in this event loop (the browser runs in a thread)."""
    async with api_env(tmp_path) as env:
        port = free_port()
        config = uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())

        async def listening() -> bool:
            if task.done():
                task.result()  # raises what stopped the server
            return server.started

        try:
            await wait_for(listening, timeout=10, what="uvicorn to listen")
            yield env, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


async def in_browser(step: Callable[[], _T]) -> _T:
    """Runs a blocking WebDriver step off the event loop, which keeps serving the page."""
    return await asyncio.to_thread(step)


def shot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert browser.save_screenshot(str(path)), f"no screenshot at {path}"
    print(f"screenshot: {path}")
    return path


def wait_until(browser: WebDriver, condition: Callable[[WebDriver], object]) -> None:
    # a form's post reloads the page: an element found just before the reload is stale by the
    # time its text is read, which means "not yet", as a missing one does
    WebDriverWait(
        browser,
        WAIT,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(condition)


async def seed(env: ApiEnv) -> tuple[Alarm, WorkOrder]:
    """A day's counter readings, an active alarm and an open work order on the autoclave."""
    await env.series.write(
        [
            Reading("autoclave-1", "cycles_total", 4400.0 + hour, NOW - timedelta(hours=12 - hour))
            for hour in range(12)
        ]
    )
    alarm, _ = await env.records.raise_alarm(
        "autoclave-1", "fault:E12", "major", "door seal worn", NOW - timedelta(hours=1)
    )
    draft = WorkOrderDraft(kind="corrective", device_id="autoclave-1", title="replace door seal")
    order, _ = await env.records.open_work_order(draft, "mia")
    return alarm, order


async def test_a_technician_signs_in_acknowledges_and_completes(
    served: tuple[ApiEnv, str], driver: WebDriver
) -> None:
    env, base = served
    alarm, order = await seed(env)

    def sign_in_and_see_the_fleet() -> None:
        driver.get(f"{base}/")
        wait_until(driver, lambda d: "/login" in d.current_url)
        shot(driver, "1-login")
        driver.find_element(By.ID, "token").send_keys(env.tokens["technician"])
        driver.find_element(By.ID, "sign-in").click()
        wait_until(driver, lambda d: d.find_elements(By.ID, "fleet"))
        shot(driver, "2-fleet")

    await in_browser(sign_in_and_see_the_fleet)
    rows = await in_browser(
        lambda: [
            r.get_attribute("data-device")
            for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-device]")
        ]
    )
    assert rows == sorted(device.id for device in env.site.devices)
    cookies = await in_browser(driver.get_cookies)
    session = next(cookie for cookie in cookies if cookie["name"] == "equipwatch_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    sparks = await in_browser(
        lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-device="autoclave-1"] svg.spark')
    )
    assert len(sparks) == 1

    def acknowledge() -> None:
        driver.get(f"{base}/alarms")
        wait_until(driver, lambda d: d.find_elements(By.ID, f"acknowledge-{alarm.id}"))
        shot(driver, "3-alarms")
        driver.find_element(By.ID, f"acknowledge-{alarm.id}").click()
        wait_until(
            driver,
            lambda d: (
                "by tom" in d.find_element(By.CSS_SELECTOR, f'tr[data-alarm="{alarm.id}"]').text
            ),
        )
        shot(driver, "4-acknowledged")

    await in_browser(acknowledge)
    acknowledged = await env.records.alarm(alarm.id)
    assert acknowledged is not None
    assert acknowledged.acknowledged_by == "tom"

    def start_and_complete() -> None:
        driver.get(f"{base}/work-orders")
        wait_until(driver, lambda d: d.find_elements(By.ID, f"start-{order.id}"))
        driver.find_element(By.ID, f"start-{order.id}").click()
        wait_until(driver, lambda d: d.find_elements(By.ID, f"complete-{order.id}"))
        driver.find_element(By.ID, f"counter-{order.id}-cycles_total").send_keys("4411")
        driver.find_element(By.ID, f"remedy-{order.id}").send_keys("REPLACED")
        shot(driver, "5-work-order")
        driver.find_element(By.ID, f"complete-{order.id}").click()
        wait_until(
            driver,
            lambda d: (
                d.current_url.endswith("/work-orders")
                and not d.find_elements(By.CSS_SELECTOR, f'tr[data-work-order="{order.id}"]')
            ),
        )
        shot(driver, "6-completed")

    await in_browser(start_and_complete)
    done = await env.records.work_order(order.id)
    assert done is not None
    assert done.state == "done"
    assert done.counters == {"cycles_total": 4411.0}
    assert done.remedy_code == "REPLACED"
    audit = await env.records.audit_log(entity="work_order", entity_id=str(order.id))
    assert [entry.actor for entry in audit.items][-2:] == ["tom", "tom"]
