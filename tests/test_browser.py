"""What a researcher sees, checked in a real browser: a tiny study in the MLflow UI.

Runs a two-run study into a temporary SQLite store, starts the UI with
``disentbench ui`` (so the URL it prints is what the browser opens), and drives
headless Chromium with Selenium: the study's parent run, its nested runs and
their scores must be on screen as the printed URL opens, with no click (the
study's shared view), then the parent run's scores plot and a run's
latent-traversal GIF. Screenshots
go to the test's temporary folder; with ``DISENTBENCH_SAVE_SCREENSHOTS=1`` the
study trains longer (so the pictures show something) and the screenshots are
also copied to ``docs/images/`` for the README.

Skipped, with the reason, where Selenium, Chromium or chromedriver is missing
(``apt-get install chromium chromium-driver``; ``pip install -e ".[dev]"``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAVE_SCREENSHOTS = os.environ.get("DISENTBENCH_SAVE_SCREENSHOTS", "") not in ("", "0")
WAIT = 120  # seconds: the UI is a React app, and CI machines can be slow
SCORE = "eval/mean/mig/discrete_mig"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
)


def _find(names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((path for path in extra if Path(path).is_file()), None)


def _browser_or_skip() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("browser test skipped: Selenium is not installed (pip install -e '.[dev]')")
    chromium = os.environ.get("DISENTBENCH_CHROMIUM") or _find(
        ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"), ("/usr/lib/chromium/chromium",)
    )
    driver = os.environ.get("DISENTBENCH_CHROMEDRIVER") or _find(("chromedriver",), ("/usr/lib/chromium/chromedriver",))
    missing = [name for name, path in (("Chromium", chromium), ("chromedriver", driver)) if not path]
    if missing:
        pytest.skip(
            f"browser test skipped: no {' and no '.join(missing)} installed "
            "(Debian/Ubuntu: apt-get install chromium chromium-driver)"
        )
    return chromium, driver


def _study_config(path: Path) -> Path:
    steps, batch = (400, 32) if SAVE_SCREENSHOTS else (10, 8)
    config = {
        "name": "browser_study",
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}}],
        "seeds": [0],
        "training": {"steps": steps, "batch_size": batch, "learning_rate": 0.0005, "device": "cpu",
                     "log_every": max(steps // 4, 1), "checkpoint_every": 10_000},
        "evaluation": {"representations": ["mean"], "metrics": [{"name": "mig", "params": {"num_train": 100}}]},
    }
    if SAVE_SCREENSHOTS:  # pictures for the README: scores of both representations, two metrics
        config["evaluation"] = {"representations": ["mean", "sampled"], "metrics": [
            {"name": "mig", "params": {"num_train": 1000}},
            {"name": "factor_vae_score", "params": {"num_train": 300, "num_eval": 150, "num_variance_estimate": 2000}},
        ]}
    path.write_text(yaml.safe_dump(config))
    return path


class _UI:
    """``disentbench ui`` in its own process group; ``url`` is the experiment URL it printed."""

    def __init__(self, config: Path, uri: str, cwd: Path):
        self.log = open(cwd / "ui.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "disentbench.core.cli.main", "ui", str(config), "--tracking-uri", uri, "--timeout", "180"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        line = self.process.stdout.readline()  # printed once the server answers
        match = re.search(r"(http://\S+)", line)
        if not match:
            self.stop()
            raise AssertionError(f"disentbench ui printed no URL: {line!r}\n{self.output()}")
        self.url = match.group(1)
        self.base = self.url.split("#", 1)[0]
        overview = re.search(r"Study overview.*: (http://\S+)", self.process.stdout.readline())
        self.overview_url = overview.group(1) if overview else None

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        return self.process.returncode


def _chrome(chromium: str, chromedriver: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def _widen(driver, *columns: tuple[str, int]) -> None:
    """Drag the header resize handles of the runs table (best effort: only the screenshot depends on it)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    for col_id, pixels in columns:
        try:
            handle = driver.find_element(By.CSS_SELECTOR, f'[role=columnheader][col-id="{col_id}"] .ag-header-cell-resize')
            ActionChains(driver).click_and_hold(handle).move_by_offset(pixels, 0).release().perform()
        except WebDriverException:
            pass
    time.sleep(0.5)


def test_study_in_the_mlflow_ui(tmp_path, monkeypatch, record_property):
    chromium, chromedriver = _browser_or_skip()
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from disentbench.core.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _study_config(tmp_path / "browser_study.yaml")
    result = CliRunner().invoke(main, ["run", str(config), "--device", "cpu", "--quiet", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("browser_study")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("disentbench.kind") == "study")
    children = sorted((r for r in runs if r.data.tags.get("disentbench.kind") == "run"), key=lambda r: r.info.run_name)
    assert len(children) == 2

    shots = tmp_path / "screenshots"
    shots.mkdir()
    record_property("screenshots", str(shots))
    print(f"screenshots: {shots}")
    ui = _UI(config, uri, tmp_path)
    driver = _chrome(chromium, chromedriver, tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    wait = WebDriverWait(driver, WAIT)

    def shot(name: str) -> Path:
        path = shots / name
        driver.save_screenshot(str(path))
        (shots / f"{Path(name).stem}.html").write_text(driver.page_source)
        return path

    def wait_for(condition, what: str):
        try:
            return wait.until(condition)
        except TimeoutException:
            shot(f"failed_{re.sub(r'[^a-z]+', '_', what.lower())}.png")
            raise AssertionError(f"the MLflow UI did not show {what} within {WAIT} s; see {shots}") from None

    name_cells = (By.CSS_SELECTOR, '[role=gridcell][col-id="attributes.`Run Name`"]')

    def names_shown(_=None) -> list[str]:
        return [cell.text.splitlines()[-1] for cell in driver.find_elements(*name_cells) if cell.text.strip()]

    try:
        assert ui.url.startswith("http://127.0.0.1:"), ui.url
        assert f"#/experiments/{experiment.experiment_id}" in ui.url, ui.url
        driver.get(ui.url)

        # Nothing is clicked until the scores are found: the URL opens disentbench's shared view of the study
        # (every run a row of its own, sorted by the headline score, the score columns selected).
        assert "viewStateShareKey=disentbench-study" in ui.url, ui.url

        # 1. the study's parent run
        wait_for(lambda d: parent.info.run_name in names_shown(), f"the parent run {parent.info.run_name!r}")

        # 2. the nested runs, as rows of their own (no parent to expand), and their scores
        expected = [r.info.run_name for r in children]
        wait_for(lambda d: all(name in names_shown() for name in expected), f"the nested runs {expected}")
        assert all(re.fullmatch(r"beta_vae beta=[14] dsprites_procedural s=0", n) for n in expected), expected

        header = (By.CSS_SELECTOR, f'[role=columnheader][col-id="metrics.`{SCORE}`"]')
        wait_for(EC.presence_of_element_located(header), f"the {SCORE} column")
        score_cells = (By.CSS_SELECTOR, f'[role=gridcell][col-id="metrics.`{SCORE}`"]')
        wait_for(lambda d: sum(c.text.strip() not in ("", "-") for c in d.find_elements(*score_cells)) >= 2,
                 "scores in the score column")
        shown = sorted(float(c.text) for c in driver.find_elements(*score_cells) if c.text.strip() not in ("", "-"))
        recorded = sorted(r.data.metrics[SCORE] for r in children)
        assert shown == pytest.approx(recorded, rel=1e-4, abs=1e-6), (shown, recorded)
        assert names_shown()[:2] == [r.info.run_name for r in sorted(children, key=lambda r: -r.data.metrics[SCORE])]
        beta = (By.CSS_SELECTOR, '[role=gridcell][col-id="params.`model.beta`"]')  # the swept hyperparameter
        assert sorted(c.text for c in driver.find_elements(*beta) if c.text.strip() not in ("", "-")) == ["1.0", "4.0"]
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):  # the assistant side panel
            if close.is_displayed():
                close.click()
        _widen(driver, ("attributes.`Run Name`", 170), (f"metrics.`{SCORE}`", 60))  # cosmetic, for the screenshot
        runs_png = shot("ui_runs.png")

        # 3. the study at a glance: the parent run's scores plot, at the second URL ui printed
        from PIL import Image

        assert ui.overview_url and parent.info.run_id in ui.overview_url, ui.overview_url
        plot = Path(client.download_artifacts(parent.info.run_id, "study/scores.png", str(tmp_path)))
        driver.get(ui.overview_url)
        wait_for(lambda d: d.execute_script(
            "return Array.from(document.images).some(i => i.complete && i.naturalWidth === arguments[0])",
            Image.open(plot).size[0]), "the study's scores plot")
        overview_png = shot("ui_study_overview.png")

        # 4. a run's traversal GIF on its artifacts page

        child = children[-1]
        gif = Path(client.download_artifacts(child.info.run_id, "images/traversals.gif", str(tmp_path)))
        width = Image.open(gif).size[0]
        driver.get(f"{ui.base}#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}"
                   "/artifacts/images/traversals.gif?workflowType=machine_learning")
        wait_for(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), child.info.run_name), "the run's name")
        loaded = "return Array.from(document.images).filter(i => i.complete && i.naturalWidth === arguments[0]).length"
        wait_for(lambda d: d.execute_script(loaded, width) > 0, "the traversal GIF")
        assert "images/traversals.gif" in driver.find_element(By.TAG_NAME, "body").text
        traversal_png = shot("ui_traversals.png")

        # the score card (the UI keeps the selected artifact on a hash change: click it in the tree)
        driver.find_element(By.CSS_SELECTOR, '[data-testid=artifact-tree-node][artifact-name="score_card.png"]').click()
        wait_for(lambda d: d.execute_script(
            "return Array.from(document.images).some(i => i.complete && i.naturalWidth >= 600)"), "the score card")
        card_png = shot("ui_score_card.png")
    finally:
        driver.quit()
        code = ui.stop()
    assert code == 0, f"disentbench ui exited with {code} on Ctrl-C\n{ui.output()}"

    if SAVE_SCREENSHOTS:
        target = REPO / "docs" / "images"
        target.mkdir(parents=True, exist_ok=True)
        for png in (runs_png, overview_png, traversal_png, card_png):
            shutil.copy(png, target / png.name)
        print(f"screenshots copied to {target}")
