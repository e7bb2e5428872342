// The portal in headless Chromium, driven by Playwright (run by tests/portal.rs, which starts
// the server and passes its address, token and the paths below in the environment).
//
// A wrong token is refused and shows nothing; with the right one the operator enables
// replication of rg1/app1, sees it reach `protected`, runs a test failover and its cleanup
// from the VM page, sees each job's steps succeed, and a screenshot of the VM page is saved.
'use strict';

const { chromium } = require(process.env.FERRY_TEST_PLAYWRIGHT);

const URL = process.env.FERRY_URL;
const TOKEN = process.env.FERRY_TOKEN;
const SHOT = process.env.FERRY_SCREENSHOT;
const LONG = 180000;

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
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
  page.on('request', (r) => requests.push(r.url()));
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // A refused call is counted by its response below, not as a script error.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().includes('status of 401')) errors.push(m.text());
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

  // The VM page: test failover, with its steps, then its cleanup.
  await page.click('a[href="#/vm/rg1/app1"]');
  await page.waitForSelector('#action-test-failover');
  await page.click('#action-test-failover');
  await page.waitForSelector('#dialog[open] #point');
  await page.click('#confirm');
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
