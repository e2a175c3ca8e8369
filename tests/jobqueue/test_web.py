"""The web job manager in a real headless chromium (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

SCRIPT = """import time
import matplotlib.pyplot as plt
print("first line of the log", flush=True)
time.sleep(4)
plt.plot([3, 1, 2])
plt.savefig("figure.png")
print("done")
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless chromium driven through chromedriver."""
    if not (os.path.exists(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        reason = "chromium and chromium-driver are not installed (apt-get install them)"
        if os.environ.get("ALLOTMENT_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sign_in_submit_follow_the_log_and_see_the_figure(batch_service: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    service = batch_service()
    token = service.token("alice", ("my-collab",))
    wait = WebDriverWait(browser, 60)

    browser.get(service.url + "/app")
    wait.until(ec.presence_of_element_located((By.ID, "token"))).send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait.until(ec.presence_of_element_located((By.ID, "jobs")))

    browser.find_element(By.ID, "new-job").click()
    editor = wait.until(ec.presence_of_element_located((By.ID, "editor")))
    editor.clear()
    editor.send_keys(SCRIPT)
    browser.find_element(By.ID, "submit").click()

    # the job page: the log shows while the job runs, then the figure appears
    wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "first line of the log"))
    assert browser.find_element(By.ID, "status").text in ("running", "validated")
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "finished"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#outputs img")))
    image = browser.find_element(By.CSS_SELECTOR, "#outputs img")
    wait.until(lambda driver: driver.execute_script("return arguments[0].complete", image))
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 640
    assert "import matplotlib.pyplot as plt" in browser.find_element(By.ID, "code").text
    assert "done" in browser.find_element(By.ID, "log").text
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#outputs a")]
    assert "figure.png" in links

    # the list, as the portal shows it
    browser.get(service.url + "/app")
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jobs tr[id^=job-]")))
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1:3] == ["finished", "SpiNNaker"]
    assert cells[3].startswith("import time import matplotlib")
    assert cells[5] == "alice"


@pytest.mark.timeout(120)
def test_a_bad_token_and_a_bad_script_are_told_plainly(batch_service: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    service = batch_service()
    wait = WebDriverWait(browser, 60)
    browser.get(service.url + "/app/login")
    wait.until(ec.presence_of_element_located((By.ID, "token"))).send_keys("nonsense")
    browser.find_element(By.ID, "sign-in").click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "not valid"))

    browser.find_element(By.ID, "token").send_keys(service.token())
    browser.find_element(By.ID, "sign-in").click()
    wait.until(ec.presence_of_element_located((By.ID, "jobs")))  # signed in: the job list
    browser.get(service.url + "/app/submit")
    wait.until(ec.presence_of_element_located((By.ID, "config"))).send_keys("{not json")
    browser.find_element(By.ID, "submit").click()
    wait.until(
        ec.text_to_be_present_in_element(
            (By.TAG_NAME, "body"), "hardware configuration is not JSON"
        )
    )
