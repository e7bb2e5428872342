// The portal in headless Chromium, driven by Playwright (run by tests/portal.rs, which starts
// the server and passes its address, token and the paths below in the environment).
//
// A wrong token is refused and shows nothing; with the right one the operator enables
// replication of rg1/app1, sees it reach `protected`, runs a test failover and its cleanup
// from the VM page, sees each job's steps succeed, and a screenshot of the VM page is saved.
// A dialog closed with Esc leaves nothing behind: confirming the next one runs only its own
// action. A page whose refresh keeps failing shows its error once, and no more once a
// refresh succeeds.
'use strict';

const { chromium } = require(process.env.FERRY_TEST_PLAYWRIGHT);

const URL = process.env.FERRY_URL;
const TOKEN = process.env.FERRY_TOKEN;
const SHOT = process.env.FERRY_SCREENSHOT;
const LONG = 180000;

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

// Wait until `f()` holds, or fail naming `what` after `ms`.
async function waitFor(f, what, ms) {
  const deadline = Date.now() + ms;
  while (!f()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The API, called as an operator's script would, beside the browser.
async function api(method, path, body) {
  const r = await fetch(`${URL}${path}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  check(r.ok, `${method} ${path}: ${r.status} ${await r.clone().text()}`);
  return r.json();
}

async function followJob(page) {
  await page.click('#job-link');
  await page.waitForSelector('#job-state', { timeout: LONG });
  await page.waitForFunction(() => {
    const s = document.querySelector('#job-state');
    return s && s.textContent !== 'running';
  }, null, { timeout: LONG });
  const state = await page.textContent('#job-state');
  const steps = await page.$$eval('.step', (els) => els.map((e) => [
    e.querySelector('.step-name').textContent, e.querySelector('.step-state').textContent]));
  check(state === 'succeeded', `the job succeeded (it is ${state}; steps ${JSON.stringify(steps)})`);
  check(steps.length > 0 && steps.every(([, s]) => s === 'succeeded'),
    `every step succeeded: ${JSON.stringify(steps)}`);
  return steps;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.FERRY_TEST_CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const requests = [];
  const calls = [];
  page.on('request', (r) => { requests.push(r.url()); calls.push(`${r.method()} ${r.url()}`); });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // A refused call is counted by its response below, not as a script error; nor is the job
  // asked for before it exists, below.
  let missingJob = null;
  page.on('console', (m) => {
    if (m.type() !== 'error' || m.text().includes('status of 401')) return;
    if (missingJob && m.location().url.endsWith(missingJob)) return;
    errors.push(m.text());
  });
  const refused = [];
  page.on('response', (r) => { if (r.status() === 401) refused.push(`${r.request().headers().authorization} ${r.url()}`); });

  // A wrong token: refused, and nothing of the API's data is on the page.
  await page.goto(URL);
  await page.fill('#token', 'not-the-token');
  await page.click('#signin button');
  await page.waitForSelector('#signin-error:not([hidden])');
  check((await page.textContent('#signin-error')).includes('refused'), 'the wrong token is refused');
  check(!(await page.$('#overview')) && !(await page.content()).includes('rg1/app1'),
    'no data is shown without a valid token');
  check(await page.isHidden('#nav'), 'no navigation without a valid token');

  // The right token: the overview lists the VM, not protected yet.
  await page.fill('#token', TOKEN);
  await page.click('#signin button');
  await page.waitForSelector('#overview');
  await page.waitForSelector('[data-enable="rg1/app1"]');

  // Enable replication, with confirmation, and watch the item reach `protected`.
  await page.click('[data-enable="rg1/app1"]');
  await page.waitForSelector('#dialog[open]');
  await page.selectOption('#enable-region', 'west');
  await page.selectOption('#enable-policy', 'fast');
  await page.click('#confirm');
  await page.waitForSelector('#job-link');
  await page.waitForSelector('tr[data-item="rg1/app1"] .state:text-is("protected")', { timeout: LONG });
  check((await page.textContent('#by-state')).includes('protected'), 'the overview counts items by state');

  // The VM page. Open the dialog to disable replication and close it with Esc: nothing is
  // asked of the API, and confirming the next dialog (a test failover) runs only that.
  await page.click('a[href="#/vm/rg1/app1"]');
  await page.waitForSelector('#action-disable');
  await page.click('#action-disable');
  await page.waitForSelector('#dialog[open]');
  check((await page.textContent('#dialog-title')).includes('Disable'), 'the disable dialog is open');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#dialog:not([open])', { state: 'attached' });

  // The test failover, with its steps, then its cleanup.
  await page.click('#action-test-failover');
  await page.waitForSelector('#dialog[open] #point');
  const before = calls.length;
  const oldNotice = await page.textContent('#notice');
  await page.click('#confirm');
  await page.waitForFunction((old) => {
    const n = document.querySelector('#notice');
    return n && n.textContent !== old;
  }, oldNotice);
  const sent = calls.slice(before).filter((c) => !c.startsWith('GET '));
  check(sent.length === 1 && sent[0].startsWith('POST ') && sent[0].endsWith('/test-failover'),
    `confirming the test failover sent only its request: ${JSON.stringify(sent)}`);
  const notice = await page.textContent('#notice');
  check(notice.includes('(test-failover)'), `the notice names the test failover: ${notice}`);
  const steps = await followJob(page);
  console.log(`test failover: ${JSON.stringify(steps)}`);

  await page.goto(`${URL}/#/vm/rg1/app1`);
  await page.waitForSelector('#action-test-failover-cleanup', { timeout: LONG });
  await page.click('#action-test-failover-cleanup');
  await page.click('#confirm');
  console.log(`cleanup: ${JSON.stringify(await followJob(page))}`);

  // The VM page with its RPO chart and recovery points, as a screenshot.
  await page.goto(`${URL}/#/vm/rg1/app1`);
  await page.waitForSelector('#action-test-failover', { timeout: LONG });
  await page.waitForSelector('#points-timeline circle', { state: 'attached', timeout: LONG });
  await page.waitForSelector('#rpo-chart polyline', { state: 'attached', timeout: LONG });
  check((await page.textContent('#target')).includes('west'), 'the target configuration is shown');
  check((await page.$$('#disks tbody tr')).length === 1, 'the VM page lists its disk');
  await page.screenshot({ path: SHOT, fullPage: true });

  // Jobs and events pages.
  await page.goto(`${URL}/#/jobs`);
  await page.waitForSelector('#jobs td');
  await page.goto(`${URL}/#/events`);
  await page.waitForSelector('#events td');

  // The page of a job that does not exist yet: each refresh fails, and the error is shown
  // once, however many refreshes fail. Once the job exists, the page shows it, error gone.
  const next = Math.max(0, ...(await api('GET', '/v1/jobs')).map((j) => j.id)) + 1;
  missingJob = `/v1/jobs/${next}`;
  const asked = () => requests.filter((r) => r.endsWith(missingJob)).length;
  await page.goto(`${URL}/#/jobs/${next}`);
  await waitFor(() => asked() >= 4, 'four refreshes of the missing job', 30000);
  const shown = await page.$$eval('.error', (els) => els.filter((e) => !e.hidden).map((e) => e.textContent));
  check(shown.length === 1 && shown[0].includes(`job ${next} does not exist`),
    `one error after ${asked()} failed refreshes: ${JSON.stringify(shown)}`);
  const verified = await api('POST', '/v1/groups/rg1/vms/app1/replication/verify', {});
  check(verified.problems.length === 0, `the replica verifies: ${JSON.stringify(verified)}`);
  await page.waitForSelector('#job-state', { timeout: LONG });
  check((await page.textContent('#job')).includes('verify-replication'), 'the job page shows the new job');
  check(await page.isHidden('#poll-error'), 'the error is gone once a refresh succeeds');
  check((await page.$$('.error:not([hidden])')).length === 0, 'no error is left on the page');

  const origin = new globalThis.URL(URL).origin;
  const foreign = requests.filter((r) => !r.startsWith(origin) && !r.startsWith('data:'));
  check(foreign.length === 0, `nothing is loaded from elsewhere: ${foreign}`);
  check(errors.length === 0, `no script errors: ${errors}`);
  check(refused.length === 1, `only the wrong token was refused: ${refused}`);
  await browser.close();
  console.log('portal: ok');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
