// The certflow web console in a real browser: Debian's chromium, headless,
// driven by playwright-core (never a downloaded browser). Started by the Rust
// e2e test tests/e2e/console_ui.rs, which runs the OpenID provider and
// `certflow serve`, with:
//   CERTFLOW_URL     http://127.0.0.1:<port> of certflow
//   SCREENSHOT_DIR   where each page's screenshot goes (test artifacts)
//   DOCS_IMG_DIR     optional: where the README's pictures go (docs/img: the
//                    dashboard, a certificate's page and the inventory, with data)
//   AGENT_URL        https://127.0.0.1:<port> of certflow's agent listener (mTLS)
//   AGENT_CA         PEM file of the CA that issued the listener's certificate
//   WORK_DIR         scratch directory (the test agent's key and CSR, by openssl)
// Exits non-zero, saying which step failed, on the first failure.
//
// Flow: the sign-in start page (signed out, /console/ says what certflow is
// and offers "Sign in with <provider>"); sign in through it and the
// provider's own login form; the navigation fits one row at 1280 px; request a certificate
// (first with a bad name: the message sits next to the field); find it in the
// inventory (live search through htmx); open it; renew; download the chain, a
// PEM bundle with the key and a PKCS#12; revoke after the confirmation page;
// see every step in the audit log; enrol an agent over the agent API with a
// join token created on the agents page, assign the certificate to it from
// the certificate's page, and see its reports (installed, then a failed
// install of the renewed version) on the certificate, agents and dashboard
// pages; unassign it; the audit log's details as definition lists with dates
// and names; every page at 390 px wide (tables scroll inside their box, the
// page itself never wider than the screen); an operator of two teams lists
// both at once ("all my teams"); then as a viewer: no actions shown, and
// posting them anyway is refused. axe-core runs on every page (no serious or
// critical violation), and any Content-Security-Policy violation fails.

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const BASE = process.env.CERTFLOW_URL;
const SHOTS = process.env.SCREENSHOT_DIR;
if (!BASE || !SHOTS) throw new Error('CERTFLOW_URL and SCREENSHOT_DIR are required');
fs.mkdirSync(SHOTS, { recursive: true });
const DOCS_IMG = process.env.DOCS_IMG_DIR;
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const AGENT_URL = process.env.AGENT_URL;
const AGENT_CA = process.env.AGENT_CA && fs.readFileSync(process.env.AGENT_CA, 'utf8');
const WORK = process.env.WORK_DIR;
if (!AGENT_URL || !AGENT_CA || !WORK) throw new Error('AGENT_URL, AGENT_CA and WORK_DIR are required');

let step = 'start';
const log = (msg) => console.log(`[console.spec] ${msg}`);
function check(cond, what) {
  if (!cond) throw new Error(`${step}: ${what}`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic', '--disable-dev-shm-usage'],
});

const cspViolations = [];

async function newPage() {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  // Loopback only: the provider's login page asks for a web font elsewhere.
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' || host === 'localhost' ? route.continue() : route.abort();
  });
  const page = await context.newPage();
  page.on('console', (m) => {
    const text = m.text();
    if (/Content Security Policy/i.test(text) && page.url().startsWith(BASE)) cspViolations.push(`${page.url()}: ${text}`);
  });
  page.on('pageerror', (e) => {
    if (page.url().startsWith(BASE)) cspViolations.push(`${page.url()}: page error ${e.message}`);
  });
  return { context, page };
}

/** Signs in as `user` through the provider's devInteractions login and consent forms
 * (from the start page's button when `returnTo` is the console's front door). */
async function signIn(page, user, returnTo = '/console/') {
  step = `sign in as ${user}`;
  const response = await page.goto(`${BASE}${returnTo}`);
  check(response.ok(), `status ${response.status()}`);
  if (page.url().startsWith(`${BASE}/console/`) && await page.locator('a#sign-in').count()) {
    await Promise.all([page.waitForURL((u) => !u.href.startsWith(BASE)), page.click('a#sign-in')]);
  }
  for (let i = 0; i < 5 && !page.url().startsWith(`${BASE}/console/`); i++) {
    if (await page.locator('input[name="login"]').count()) {
      await page.fill('input[name="login"]', user);
      await page.fill('input[name="password"]', 'any');
    }
    await Promise.all([page.waitForLoadState('load'), page.locator('button[type="submit"]').first().click()]);
    await page.waitForLoadState('load');
  }
  check(page.url().startsWith(`${BASE}/console/`), `not back at the console: ${page.url()}`);
  check(await page.locator('header .subject').innerText() === user, 'the header names the person');
}

const pages = [];
/** axe-core on the current page (injected through the DevTools protocol, not as an inline script) and a screenshot. */
async function audit(page, name) {
  step = `axe ${name}`;
  await page.evaluate(AXE);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(bad.length === 0, `accessibility violations: ${JSON.stringify(bad, null, 1)}`);
  const minor = result.filter((v) => !bad.includes(v));
  if (minor.length) log(`${name}: minor axe findings ${minor.map((v) => `${v.id}(${v.impact})`).join(', ')}`);
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  pages.push(name);
}

/** A picture for the documentation (`docs/img/console-<name>.png`), so the README shows the console as it is. */
async function docShot(page, name) {
  if (!DOCS_IMG) return;
  step = `documentation picture ${name}`;
  await page.screenshot({ path: path.join(DOCS_IMG, `console-${name}.png`), fullPage: true });
}

/** One request to the agent listener: TLS verified against AGENT_CA, with the agent's identity when given. */
function agentCall(method, urlPath, { body, bearer, identity } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = https.request(`${AGENT_URL}${urlPath}`, {
      method,
      ca: AGENT_CA,
      ...(identity || {}),
      headers: {
        ...(data ? { 'content-type': 'application/json' } : {}),
        ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
      },
    }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, json: text ? JSON.parse(text) : null }));
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

/** Enrols an agent with a join token: a P-256 key and CSR from openssl, the identity from certflow. */
async function enrolAgent(token) {
  execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', path.join(WORK, 'agent.key'), '-out', path.join(WORK, 'agent.csr'), '-subj', '/CN=web-01'], { stdio: 'pipe' });
  const csr = fs.readFileSync(path.join(WORK, 'agent.csr'), 'utf8');
  const r = await agentCall('POST', '/agent/v1/enroll', { body: { csr }, bearer: token });
  check(r.status === 201, `enrol: ${r.status} ${JSON.stringify(r.json)}`);
  return { id: r.json.agent_id, identity: { cert: r.json.certificate_pem, key: fs.readFileSync(path.join(WORK, 'agent.key'), 'utf8') } };
}

/** The agent's assignment of `certId` (what it polls). */
async function assignmentOf(agent, certId) {
  const r = await agentCall('GET', '/agent/v1/assignments', { identity: agent.identity });
  check(r.status === 200, `assignments: ${r.status}`);
  return r.json.items.find((i) => i.certificate_id === certId);
}

/** The agent reports that it found `certPem` at `source` (a certificate certflow did not issue). */
async function reportDiscovered(agent, source, certPem) {
  const x = new X509Certificate(certPem);
  const item = {
    source,
    fingerprint_sha256: x.fingerprint256.replaceAll(':', '').toLowerCase(),
    serial: x.serialNumber.toLowerCase(),
    subject: x.subject.split('\n').reverse().join(','),
    issuer: x.issuer.split('\n').reverse().join(','),
    names: (x.subjectAltName || '').split(', ').filter((n) => n.startsWith('DNS:')).map((n) => n.slice(4)),
    not_after: new Date(x.validTo).toISOString(),
    certificate_pem: certPem,
  };
  const r = await agentCall('POST', '/agent/v1/discovered', { body: { items: [item] }, identity: agent.identity });
  check(r.status === 204, `discovery report: ${r.status} ${JSON.stringify(r.json)}`);
}

/** The agent reports one certificate. */
async function report(agent, item) {
  const r = await agentCall('POST', '/agent/v1/reports', { body: { items: [item], agent_version: 'certflow-agent/test' }, identity: agent.identity });
  check(r.status === 204, `report: ${r.status} ${JSON.stringify(r.json)}`);
}

/** Whether the header's brand, navigation entries and Sign out share one row (no wrap). */
async function navigationRow(page) {
  const boxes = await page.evaluate(() => [document.querySelector('header .brand'), ...document.querySelectorAll('header nav a'),
    document.querySelector('header .who button')].map((e) => {
    const b = e.getBoundingClientRect();
    return { text: e.textContent.trim(), top: b.top, bottom: b.bottom, right: b.right };
  }));
  const signOut = boxes[boxes.length - 1];
  const off = boxes.filter((b) => !(b.top < signOut.bottom && b.bottom > signOut.top) || b.right > page.viewportSize().width);
  return { entries: boxes.length - 2, off: off.map((b) => `${b.text} (top ${b.top}, right ${b.right})`) };
}

/** At the current (phone) width: the page is no wider than the screen and every table sits in a box that scrolls sideways. */
async function fitsNarrow(page, name) {
  step = `${name} at ${page.viewportSize().width} px`;
  const fit = await page.evaluate(() => {
    const vw = document.documentElement.clientWidth;
    const tables = [...document.querySelectorAll('main table')].filter((t) => t.offsetParent !== null).map((t) => {
      const box = t.closest('.scroll');
      return {
        caption: (t.querySelector('th') || t).textContent.trim().slice(0, 30),
        scrolls: !!box && getComputedStyle(box).overflowX === 'auto' && box.getBoundingClientRect().right <= vw + 0.5,
        wider: !!box && box.scrollWidth > box.clientWidth,
      };
    });
    // What sticks out, to name it when the page is too wide.
    const wide = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > vw + 0.5
      && !(e.parentElement.closest('.scroll') && getComputedStyle(e).position !== 'absolute'))
      .slice(-3).map((e) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}.${e.className} (${Math.round(e.getBoundingClientRect().right)} px)`);
    return { vw, width: document.documentElement.scrollWidth, tables, wide };
  });
  check(fit.width <= fit.vw, `the page is ${fit.width} px wide on a ${fit.vw} px screen: ${fit.wide.join(', ')}`);
  const cut = fit.tables.filter((t) => !t.scrolls);
  check(cut.length === 0, `tables without a horizontal scroll box: ${JSON.stringify(cut)}`);
  await audit(page, `${name}-narrow`);
  return fit;
}

async function headers(page, url) {
  const r = await page.request.get(url, { maxRedirects: 0 });
  return r.headers();
}

try {
  // --------------------------------------------------------------- signed out
  step = 'sign-in start page';
  const visitor = await newPage();
  const start = await visitor.page.goto(`${BASE}/console/`);
  check(start.status() === 200 && visitor.page.url() === `${BASE}/console/`, `status ${start.status()} at ${visitor.page.url()}`);
  check(await visitor.page.locator('h1').innerText() === 'Sign in to certflow', 'heading');
  check(/renews/.test(await visitor.page.locator('main').innerText()), 'it says what certflow does');
  const button = visitor.page.locator('a#sign-in');
  check(await button.innerText() === 'Sign in with Example SSO', `button: ${await button.innerText()}`);
  check(await button.getAttribute('href') === '/console/login', `button leads to ${await button.getAttribute('href')}`);
  check(await visitor.page.locator('header nav').count() === 0, 'no navigation before sign-in');
  await audit(visitor.page, 'sign-in');
  await docShot(visitor.page, 'sign-in');
  step = 'sign-in start page: the button leads to the provider';
  await Promise.all([visitor.page.waitForURL((u) => !u.href.startsWith(BASE)), button.click()]);
  check(await visitor.page.locator('input[name="login"]').count() === 1, `the provider's login form at ${visitor.page.url()}`);
  await visitor.context.close();

  // ------------------------------------------------------------ as an admin
  const admin = await newPage();
  const page = admin.page;
  await signIn(page, 'alice');
  step = 'navigation: one row at 1280 px';
  const row = await navigationRow(page);
  check(row.entries === 10, `an administrator has ten entries, not ${row.entries}`);
  check(row.off.length === 0, `off the row of Sign out: ${row.off.join(', ')}`);

  step = 'session cookie';
  // All cookies: Playwright leaves Secure ones out of a lookup by http:// URL,
  // while chromium itself keeps and sends them to loopback (a trustworthy origin).
  const cookies = await admin.context.cookies();
  const session = cookies.find((c) => c.name === '__Host-certflow_session');
  check(session && session.secure && session.httpOnly && session.sameSite === 'Lax', `cookie ${JSON.stringify(cookies)}`);

  step = 'security headers';
  const h = await headers(page, `${BASE}/console/`);
  check(/default-src 'self'/.test(h['content-security-policy'] || ''), `CSP ${h['content-security-policy']}`);
  for (const d of ["object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'", "style-src 'self'"]) {
    check(h['content-security-policy'].includes(d), `CSP lacks ${d}`);
  }
  check(/max-age=\d+/.test(h['strict-transport-security'] || ''), 'HSTS');
  check(h['x-content-type-options'] === 'nosniff', 'nosniff');
  check(!!h['referrer-policy'], 'Referrer-Policy');
  check(h['cache-control'] === 'no-store', 'pages are not cached');
  const css = await page.locator('link[rel="stylesheet"]').getAttribute('href');
  const cssHeaders = await headers(page, `${BASE}${css}`);
  check(/max-age=31536000/.test(cssHeaders['cache-control']), `asset cache ${cssHeaders['cache-control']}`);
  check(await page.locator('script:not([src])').count() === 0, 'no inline script');

  step = 'dashboard';
  check(await page.locator('h1').innerText() === 'Dashboard', 'heading');
  check(await page.locator('svg.chart rect.bar').count() === 13, '13 weekly bars');
  await audit(page, 'dashboard-empty');

  step = 'request form: validation next to the field';
  await page.goto(`${BASE}/console/certificates/new`);
  await page.fill('#names', 'bad_name.example.com');
  await page.fill('#team', 'payments');
  await page.click('button:has-text("Request certificate")');
  check(await page.locator('#names-err').isVisible(), 'an error under the names field');
  check(/LDH|label/i.test(await page.locator('#names-err').innerText()), 'it says what is wrong');
  check(await page.locator('#names').getAttribute('aria-invalid') === 'true', 'the field is marked invalid');
  await audit(page, 'request-invalid');

  step = 'request a certificate';
  await page.fill('#names', 'web.console.example.com\nwww.console.example.com');
  await page.fill('#labels', 'env=prod');
  await page.selectOption('#key_type', 'ecdsa-p384');
  await Promise.all([page.waitForURL(/\/console\/certificates\/[0-9a-f-]{36}\?done=created$/), page.click('button:has-text("Request certificate")')]);
  const id = page.url().match(/certificates\/([0-9a-f-]{36})/)[1];
  check(/issued/.test(await page.locator('.notice').innerText()), 'notice');
  log(`certificate ${id}`);

  step = 'inventory: live search with htmx';
  await page.goto(`${BASE}/console/certificates`);
  await page.fill('#f-search', 'web.console');
  await page.waitForURL(/search=web.console/);
  await page.locator('#results a', { hasText: 'web.console.example.com' }).waitFor();
  await audit(page, 'inventory');
  step = 'inventory: filters without JavaScript semantics (plain GET)';
  await page.goto(`${BASE}/console/certificates?status=revoked`);
  check(await page.locator('#results a', { hasText: 'web.console.example.com' }).count() === 0, 'status filter');
  await page.goto(`${BASE}/console/certificates?label=env%3Dprod&expiring=365&sort=not_after&order=desc`);
  check(await page.locator('#results a', { hasText: 'web.console.example.com' }).count() === 1, 'label + expiring filter');
  await page.goto(`${BASE}/console/certificates?expiring=soon`);
  check(await page.locator('#f-expiring-err').isVisible(), 'bad filter named next to its field');
  step = 'inventory: issuer filter';
  await page.goto(`${BASE}/console/certificates`);
  const issuerId = await page.locator('#f-issuer option').nth(1).getAttribute('value');
  await page.goto(`${BASE}/console/certificates?issuer=${issuerId}&search=web.console`);
  check(await page.locator('#results a', { hasText: 'web.console.example.com' }).count() === 1, 'its issuer finds it');
  check(await page.locator('#f-issuer').inputValue() === issuerId, 'the choice is kept in the form');
  await page.goto(`${BASE}/console/certificates?issuer=00000000-0000-7000-8000-000000000000&search=web.console`);
  check(await page.locator('#results a', { hasText: 'web.console.example.com' }).count() === 0, 'another issuer does not');
  await page.goto(`${BASE}/console/certificates?issuer=letsencrypt`);
  check(await page.locator('#f-issuer-err').isVisible(), 'a bad issuer is named next to its field');

  step = 'open it';
  await page.goto(`${BASE}/console/certificates?search=web.console`);
  await Promise.all([page.waitForURL(new RegExp(`/console/certificates/${id}$`)), page.click(`#results a:has-text("web.console.example.com")`)]);
  check((await page.locator('h1').innerText()).includes('web.console.example.com'), 'detail heading');
  check(await page.locator('text=ecdsa-p384').count() > 0, 'key type shown');
  check(await page.locator('.tag', { hasText: 'env=prod' }).count() === 1, 'label shown');

  step = 'agents: a join token, and an agent enrolled with it';
  await page.goto(`${BASE}/console/agents`);
  await page.fill('#j-name', 'web-01');
  await page.fill('#j-teams', 'payments');
  await page.click('button:has-text("Create join token")');
  const joinToken = await page.locator('#join-token').innerText();
  check(/^cfj_/.test(joinToken), 'token shown once');
  const agent = await enrolAgent(joinToken);
  log(`agent ${agent.id}`);

  step = 'deployments: assign the certificate to the agent';
  await page.goto(`${BASE}/console/certificates/${id}`);
  check(await page.locator('#no-deployments').isVisible(), 'no deployment yet');
  await page.selectOption('#assign-agent', agent.id);
  await Promise.all([page.waitForURL(/done=assigned$/), page.click('button:text-is("Assign")')]);
  let deployRow = page.locator('table.deployments tbody tr', { hasText: 'web-01' });
  check((await deployRow.innerText()).includes('pending'), 'pending until the agent reports');
  let assigned = await assignmentOf(agent, id);
  check(assigned && assigned.version === 1, `the agent sees version 1: ${JSON.stringify(assigned)}`);
  const v1Fingerprint = assigned.fingerprint_sha256;
  await report(agent, { certificate_id: id, version: 1, fingerprint_sha256: v1Fingerprint, status: 'installed' });
  await page.reload();
  deployRow = page.locator('table.deployments tbody tr', { hasText: 'web-01' });
  let cells = await deployRow.locator('td').allInnerTexts();
  check(cells[1] === '1' && cells[2] === '1' && cells[3].startsWith('installed'), `installed v1: ${cells}`);

  step = 'renew';
  await Promise.all([page.waitForURL(/done=renewed/), page.click('button:has-text("Renew now")')]);
  check(await page.locator('table tbody tr').filter({ hasText: 'current' }).first().innerText().then((t) => t.startsWith('2')), 'version 2 is current');
  cells = await page.locator('table.deployments tbody tr', { hasText: 'web-01' }).locator('td').allInnerTexts();
  check(cells[1] === '1' && cells[2] === '2' && /behind/.test(cells[3]), `deployed 1, current 2: ${cells}`);

  step = 'deployments: a failed install of version 2';
  assigned = await assignmentOf(agent, id);
  check(assigned.version === 2, 'the agent sees the renewal');
  await report(agent, { certificate_id: id, version: 1, fingerprint_sha256: v1Fingerprint, status: 'failed', attempted_version: 2, error: 'nginx -t: certificate key mismatch' });
  await page.reload();
  cells = await page.locator('table.deployments tbody tr', { hasText: 'web-01' }).locator('td').allInnerTexts();
  check(cells[3].startsWith('failed') && /version 2: nginx -t/.test(cells[4]), `failed with its error: ${cells}`);
  await page.goto(`${BASE}/console/`);
  const undeployed = await page.locator('table.deployments').innerText();
  check(undeployed.includes('web.console.example.com') && undeployed.includes('failed') && undeployed.includes('web-01'), `dashboard lists the undeployed version: ${undeployed}`);
  await page.goto(`${BASE}/console/certificates/${id}`);

  step = 'download the full chain';
  let [dl] = await Promise.all([page.waitForEvent('download'), page.click('a:has-text("Download full chain")')]);
  let text = fs.readFileSync(await dl.path(), 'utf8');
  check((text.match(/BEGIN CERTIFICATE/g) || []).length >= 2, 'a chain of PEM certificates');
  check(!/PRIVATE KEY/.test(text), 'no key in the chain download');

  step = 'download the PEM bundle with the key (recent login)';
  [dl] = await Promise.all([page.waitForEvent('download'), page.click('button:has-text("Download key + full chain")')]);
  text = fs.readFileSync(await dl.path(), 'utf8');
  check(/BEGIN PRIVATE KEY/.test(text) && /BEGIN CERTIFICATE/.test(text), 'key and certificates');

  step = 'download PKCS#12';
  await page.fill('#p12-password', 'correct horse battery');
  [dl] = await Promise.all([page.waitForEvent('download'), page.click('button:has-text("Download PKCS#12")')]);
  check(fs.statSync(await dl.path()).size > 500, 'a PKCS#12 file');
  check(dl.suggestedFilename().endsWith('.p12'), dl.suggestedFilename());
  await page.goto(`${BASE}/console/certificates/${id}`);
  await audit(page, 'certificate');
  await docShot(page, 'certificate');

  step = 'revoke: confirmation first';
  await page.click('a:has-text("Revoke")');
  check((await page.locator('h1').innerText()).startsWith('Revoke'), 'a confirmation page');
  await audit(page, 'revoke-confirm');
  await page.selectOption('#reason', 'keyCompromise');
  await page.click('button:has-text("Revoke certificate")');
  check(await page.locator('.error-box').isVisible(), 'not revoked without ticking the box');
  await page.check('#confirm');
  await page.selectOption('#reason', 'keyCompromise');
  await Promise.all([page.waitForURL(/done=revoked/), page.click('button:has-text("Revoke certificate")')]);
  check(await page.locator('h1 .badge').innerText() === 'revoked', 'status revoked');
  check(await page.locator('button:has-text("Renew now")').count() === 1, 'renewing a revoked certificate stays possible');

  step = 'audit log shows every step';
  await page.goto(`${BASE}/console/audit?target=certificate/${id}`);
  const auditText = await page.locator('table.audit').innerText();
  for (const action of ['certificate.create', 'certificate.renew', 'certificate.key.download', 'certificate.revoke']) {
    check(auditText.includes(action), `audit lacks ${action}`);
  }
  check(auditText.includes('alice'), 'audited as the person');
  await audit(page, 'audit');
  await page.goto(`${BASE}/console/audit?outcome=maybe`);
  check(await page.locator('.error-box').isVisible(), 'bad audit filter explained');

  for (const [name, url] of [['issuers', '/console/issuers'], ['subscriptions', '/console/subscriptions'], ['compliance', '/console/compliance?expiring_within_days=3650']]) {
    step = name;
    const r = await page.goto(`${BASE}${url}`);
    check(r.status() === 200, `status ${r.status()}`);
    await audit(page, name);
  }
  step = 'more certificates for the dashboard timeline';
  for (const [host, days] of [['api', 12], ['db', 20], ['mail', 41], ['vpn', 41], ['search', 75]]) {
    await page.goto(`${BASE}/console/certificates/new`);
    await page.fill('#names', `${host}.console.example.com`);
    await page.fill('#team', host === 'search' ? 'search' : 'payments');
    await page.fill('#validity_days', String(days));
    await Promise.all([page.waitForURL(/done=created$/), page.click('button:has-text("Request certificate")')]);
    if (host === 'api') {
      const apiId = page.url().match(/certificates\/([0-9a-f-]{36})/)[1];
      await page.selectOption('#assign-agent', agent.id);
      await Promise.all([page.waitForURL(/done=assigned$/), page.click('button:text-is("Assign")')]);
      await report(agent, { certificate_id: apiId, version: 0, fingerprint_sha256: '', status: 'broken', attempted_version: 1, error: 'reload timed out; rollback failed' });
    }
  }
  step = 'deployments: unassign';
  await page.goto(`${BASE}/console/certificates/${id}`);
  await Promise.all([page.waitForURL(/done=unassigned$/), page.click('button:has-text("Unassign")')]);
  check(await page.locator('#no-deployments').isVisible(), 'no agent installs it any more');
  check(await assignmentOf(agent, id) === undefined, 'the agent no longer sees it');
  step = 'dashboard with data';
  await page.goto(`${BASE}/console/`);
  check(await page.locator('.card .num').first().innerText() === '5', 'five active certificates');
  check(await page.locator('svg.chart text.count').count() >= 3, 'bars for the weeks with expiries');
  await audit(page, 'dashboard');
  check((await page.locator('table.deployments').innerText()).includes('api.console.example.com'), 'the broken install is undeployed');
  await docShot(page, 'dashboard');
  await page.goto(`${BASE}/console/certificates`);
  await docShot(page, 'inventory');

  step = 'agents: assignments and deployment results';
  await page.goto(`${BASE}/console/agents`);
  check(await page.locator('h3', { hasText: 'web-01' }).count() === 1, 'the agent has its section');
  const agentRow = page.locator('table.deployments tr', { hasText: 'web.console.example.com' });
  check(await agentRow.count() === 0, 'unassigned after the unassign');
  check((await page.locator('table tbody tr', { hasText: 'web-01' }).first().innerText()).includes('certflow-agent/test'), 'agent version from its report');
  check((await page.locator('table.deployments tr', { hasText: 'api.console.example.com' }).innerText()).includes('broken'), 'its broken install');
  await audit(page, 'agents');

  step = 'discovered: a certificate the agent found, taken over';
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30',
    '-keyout', path.join(WORK, 'legacy.key'), '-out', path.join(WORK, 'legacy.crt'),
    '-subj', '/O=Legacy CA/CN=legacy.console.example.com', '-addext', 'subjectAltName=DNS:legacy.console.example.com'], { stdio: 'pipe' });
  await reportDiscovered(agent, 'file:/etc/legacy/site.crt', fs.readFileSync(path.join(WORK, 'legacy.crt'), 'utf8'));
  await page.goto(`${BASE}/console/discovered`);
  const found = page.locator('table.inventory tbody tr', { hasText: 'file:/etc/legacy/site.crt' });
  check(await found.count() === 1, 'the discovered certificate is listed');
  check((await found.innerText()).includes('unmanaged') && (await found.innerText()).includes('Legacy CA'), 'unmanaged, with its issuer');
  await audit(page, 'discovered');
  await page.goto(`${BASE}/console/compliance`);
  const rated = page.locator('table.inventory tbody tr', { hasText: 'file:/etc/legacy/site.crt' });
  check((await rated.allInnerTexts()).some((t) => t.includes('unknown-issuer')), 'the discovered certificate is rated: unknown issuer');
  check((await page.locator('p[role="status"]').innerText()).includes('found by agents'), 'the summary counts discovered certificates');
  await page.goto(`${BASE}/console/discovered`);
  const discoveredId = (await found.locator('form').getAttribute('action')).split('/')[3];
  await found.locator('summary').click();
  await found.locator('select[name="team"]').selectOption('payments');
  await Promise.all([page.waitForURL(/\/console\/certificates\/[0-9a-f-]+$/), found.locator('button:has-text("Take over")').click()]);
  check((await page.locator('h1').innerText()).includes('legacy.console.example.com'), 'the new certificate is certflow\'s');
  check((await page.locator('table.deployments tbody tr', { hasText: 'web-01' }).innerText()).includes('pending'), 'assigned to the agent that found it');
  await page.goto(`${BASE}/console/discovered?status=all`);
  check((await page.locator('table.inventory tbody tr', { hasText: 'file:/etc/legacy/site.crt' }).innerText()).includes('taken over'), 'shown as taken over');

  step = 'audit log: details as a definition list, times as dates, agents and certificates by name';
  const DATE = /^\d{4}-\d\d-\d\d \d\d:\d\d UTC$/;
  await page.goto(`${BASE}/console/audit?action=deployment.assign&target=agent/${agent.id}`);
  const assignRow = page.locator('table.audit tbody tr').filter({ hasText: 'web.console.example.com' }).first();
  check(await assignRow.count() === 1, 'the assignment of the first certificate is listed');
  const agentLink = assignRow.locator(`td a[href="/console/agents#agent-${agent.id}"]`);
  check(await agentLink.innerText() === 'agent web-01', `target by name: ${await assignRow.innerText()}`);
  const certLink = assignRow.locator(`dl.details dd a[href="/console/certificates/${id}"]`);
  check(await certLink.innerText() === 'web.console.example.com', 'the certificate in the details by name, linked');
  check((await assignRow.locator('dl.details dt').allInnerTexts()).includes('certificate'), 'its term is "certificate"');
  check(DATE.test(await assignRow.locator('td').first().locator('time').innerText()), 'when, as a date');
  await page.goto(`${BASE}/console/audit?action=agent.join-token.create`);
  const tokenRow = page.locator('table.audit tbody tr').first();
  const terms = await tokenRow.locator('dl.details dt').allInnerTexts();
  const expires = tokenRow.locator('dl.details dd').nth(terms.indexOf('expires')).locator('time');
  check(terms.includes('expires') && DATE.test(await expires.innerText()), `the expiry as a date, not a Unix time: ${await tokenRow.innerText()}`);
  check(/^\d{4}-\d\d-\d\dT/.test(await expires.getAttribute('datetime')), 'with a machine-readable datetime');
  await page.goto(`${BASE}/console/audit?action=deployment.report`);
  const reportRow = page.locator('table.audit tbody tr').first();
  check((await reportRow.locator('td').nth(1).innerText()).startsWith('agent web-01'), `the agent acts by name: ${await reportRow.innerText()}`);
  check(await reportRow.locator('dl.details dl.details').count() >= 1, 'each reported item as a nested list');
  await page.goto(`${BASE}/console/audit`);
  const detailCells = await page.locator('table.audit tbody td:nth-child(6)').allInnerTexts();
  check(detailCells.length > 0 && !detailCells.some((t) => /[{}]|"\w+":/.test(t)), 'no raw JSON left in the details');
  const who = await page.locator('table.audit tbody td:nth-child(2)').allInnerTexts();
  check(!who.some((t) => t.includes(agent.id)), 'no agent shown as a bare id');
  await audit(page, 'audit-all');

  step = 'a phone-width screen';
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [name, url] of [['dashboard', '/console/'], ['inventory', '/console/certificates'], ['certificate', `/console/certificates/${id}`],
    ['audit', `/console/audit?target=certificate/${id}`], ['agents', '/console/agents'], ['discovered', '/console/discovered?status=all'],
    ['compliance', '/console/compliance?expiring_within_days=3650'], ['issuers', '/console/issuers'], ['request', '/console/certificates/new']]) {
    await page.goto(`${BASE}${url}`);
    const fit = await fitsNarrow(page, name);
    if (name === 'inventory') {
      check(fit.tables.some((t) => t.wider), 'the inventory is wider than a phone: it scrolls in its box');
      const moved = await page.evaluate(() => { const box = document.querySelector('#results .scroll'); box.scrollLeft = 120; return box.scrollLeft; });
      check(moved > 0, 'and it does scroll sideways');
    }
  }
  await page.setViewportSize({ width: 1280, height: 900 });


  step = 'a form without the CSRF token is refused';
  const forged = await page.evaluate(async (certId) => {
    const r = await fetch(`/console/certificates/${certId}/renew`, { method: 'POST', body: new URLSearchParams({ csrf: 'forged' }) });
    return r.status;
  }, id);
  check(forged === 403, `status ${forged}`);

  // ------------------------------------------------------------- as a viewer
  const viewer = await newPage();
  const vpage = viewer.page;
  await signIn(vpage, 'carol', `/console/certificates/${id}`);
  step = 'viewer: the login returns to the page asked for';
  check(vpage.url() === `${BASE}/console/certificates/${id}`, `back at ${vpage.url()}`);
  step = 'viewer: read, no actions';
  await vpage.goto(`${BASE}/console/certificates/${id}`);
  check((await vpage.locator('h1').innerText()).includes('web.console.example.com'), 'the viewer reads it');
  for (const label of ['Renew now', 'Revoke', 'Download key + full chain', 'Download PKCS#12']) {
    check(await vpage.locator(`button:has-text("${label}"), a:has-text("${label}")`).count() === 0, `${label} hidden`);
  }
  check(await vpage.locator('a:has-text("Download full chain")').count() === 1, 'public downloads stay');
  await audit(vpage, 'certificate-viewer');
  step = 'viewer: posting the actions anyway is refused';
  const refused = await vpage.evaluate(async (ids) => {
    const [certId, discId] = ids.split(' ');
    const csrf = document.querySelector('input[name="csrf"]').value;
    const post = async (url, fields) => (await fetch(url, { method: 'POST', body: new URLSearchParams({ csrf, ...fields }) })).status;
    return [
      await post(`/console/certificates/${certId}/renew`, {}),
      await post(`/console/certificates/${certId}/revoke`, { reason: 'superseded', confirm: 'yes' }),
      await post(`/console/certificates/${certId}/download-key`, { format: 'pem' }),
      await post('/console/agents/join-token', { name: 'x', ttl_minutes: '5' }),
      await post(`/console/certificates/${certId}/assign`, { agent_id: '00000000-0000-7000-8000-000000000000' }),
      await post(`/console/certificates/${certId}/unassign`, { agent_id: '00000000-0000-7000-8000-000000000000' }),
      await post(`/console/discovered/${discId}/take-over`, { team: 'payments' }),
    ];
  }, [id, discoveredId].join(' '));
  check(refused.every((s) => s === 403), `statuses ${refused}`);
  await vpage.goto(`${BASE}/console/certificates/new`);
  check(await vpage.locator('h1').innerText() === 'Not allowed', 'no request form for a viewer');

  step = 'sign out ends the provider session too';
  await vpage.goto(`${BASE}/console/`);
  await Promise.all([vpage.waitForURL((u) => !u.href.startsWith(BASE)), vpage.click('button:has-text("Sign out")')]);
  await Promise.all([vpage.waitForURL(`${BASE}/console/signed-out`), vpage.locator('button[name="logout"][value="yes"]').click()]);
  check(await vpage.locator('h1').innerText() === 'Signed out', 'signed out page');
  const after = await vpage.request.get(`${BASE}/console/`, { maxRedirects: 0 });
  check(after.status() === 200 && (await after.text()).includes('Sign in with Example SSO'), `the start page again: ${after.status()}`);
  const deep = await vpage.request.get(`${BASE}/console/certificates/${id}`, { maxRedirects: 0 });
  check(deep.status() === 303 && deep.headers().location === `/console/login?return_to=%2Fconsole%2Fcertificates%2F${id}`,
    `a deep link goes to the login and back: ${deep.status()} ${deep.headers().location}`);
  await vpage.goto(`${BASE}/console/certificates`);
  check(!vpage.url().startsWith(BASE) && await vpage.locator('input[name="login"]').count() === 1, 'the provider asks for credentials again');

  // ----------------------------------------------- an operator of two teams
  const operator = await newPage();
  const opage = operator.page;
  await signIn(opage, 'bob', '/console/certificates');
  step = 'operator of two teams: all my teams at once';
  check(await opage.locator('#f-team').inputValue() === '', 'the team filter starts at "all my teams"');
  const options = await opage.locator('#f-team option').allInnerTexts();
  check(JSON.stringify(options) === JSON.stringify(['all my teams', 'payments', 'search']), `team choices ${options}`);
  const listed = await opage.locator('table.inventory tbody tr').allInnerTexts();
  for (const [host, team] of [['search', 'search'], ['api', 'payments'], ['web', 'payments']]) {
    check(listed.some((t) => t.includes(`${host}.console.example.com`) && t.includes(team)), `${host} of team ${team} listed: ${listed.length} rows`);
  }
  await audit(opage, 'inventory-two-teams');
  await opage.goto(`${BASE}/console/certificates?team=search`);
  const onlySearch = await opage.locator('table.inventory tbody tr').allInnerTexts();
  check(onlySearch.length === 1 && onlySearch[0].includes('search.console.example.com'), `one team chosen: ${onlySearch}`);
  await opage.goto(`${BASE}/console/certificates?team=billing`);
  check(await opage.locator('#f-team-err').isVisible(), 'a team not theirs is refused next to the field');
  await operator.context.close();

  step = 'no open redirect through return_to';
  const other = await newPage();
  for (const target of ['//evil.example.com/console/', 'https://evil.example.com/console/', '/\\evil.example.com/console/']) {
    await other.context.clearCookies();
    await signIn(other.page, 'bob', `/console/login?return_to=${encodeURIComponent(target)}`);
    check(other.page.url() === `${BASE}/console/`, `${target} led to ${other.page.url()}`);
  }

  step = 'content security policy';
  check(cspViolations.length === 0, `violations: ${cspViolations.join('\n')}`);
  log(`ok: ${pages.length} pages checked with axe-core: ${pages.join(', ')}`);
  await browser.close();
} catch (e) {
  console.error(`[console.spec] FAILED at step "${step}": ${e.stack || e}`);
  await browser.close();
  process.exit(1);
}
