// Nango's official Node client (@nangohq/node, unchanged) against syncschedd.
//
// Spawns the built daemon (path in $SYNCSCHEDD) on a free port with a temporary configuration
// whose sync command records each run's environment, then drives every sync method of the
// client: startSync, pauseSync, triggerSync (plain, {reset: true}, legacy sync_mode strings and
// booleans), syncStatus (names, name::variant, objects, '*'), updateSyncConnectionFrequency
// (and null), createSyncVariant, deleteSyncVariant and deleteConnection; checks the runs the
// command recorded; and kills the daemon with SIGKILL in the middle, restarting it on the same
// database to check that the state survived.
//
// Run by ctest (test `nango_client`), or by hand:
//   SYNCSCHEDD=build/src/daemon/syncschedd node --test tests/nango/nango.test.mjs
//
// On PostgreSQL (ctest `nango_client_pg`, issue 12): with SYNCSCHED_NANGO_STORE=pg, the daemon's
// database is a fresh database (dropped at the end) on the PostgreSQL test server named in
// $SYNCSCHED_TEST_PG_DIRFILE, made by the tool $SYNCSCHED_PG_SERVER (tests/support/pg_server_main.cc).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = JSON.parse(fs.readFileSync(path.join(here, 'package.json'), 'utf8'));
const pinned = pkg.dependencies['@nangohq/node'];
const daemonPath = process.env.SYNCSCHEDD;
const KEY = 'nango-test-key';
const DEADLINE_MS = 15000;

// ---- Setup: the pinned client, installed from the npm registry ----

function installedVersion() {
  try {
    const p = path.join(here, 'node_modules', '@nangohq', 'node', 'package.json');
    return JSON.parse(fs.readFileSync(p, 'utf8')).version;
  } catch {
    return null;
  }
}

let skipReason = null;
if (!daemonPath || !fs.existsSync(daemonPath)) {
  skipReason = `SYNCSCHEDD must name the built syncschedd (got ${JSON.stringify(daemonPath)})`;
} else if (installedVersion() !== pinned) {
  try {
    execFileSync('npm', ['install', '--no-audit', '--no-fund'], { cwd: here, stdio: 'inherit' });
  } catch (e) {
    skipReason = `could not install @nangohq/node@${pinned} from the npm registry: ${e.message}`;
  }
  if (!skipReason && installedVersion() !== pinned) {
    skipReason = `npm installed @nangohq/node@${installedVersion()}, not the pinned ${pinned}`;
  }
}
const onPostgres = process.env.SYNCSCHED_NANGO_STORE === 'pg';
if (!skipReason && onPostgres && !(process.env.SYNCSCHED_PG_SERVER && process.env.SYNCSCHED_TEST_PG_DIRFILE)) {
  skipReason = 'SYNCSCHED_NANGO_STORE=pg needs SYNCSCHED_PG_SERVER and SYNCSCHED_TEST_PG_DIRFILE';
}
if (skipReason) console.log(`# skipping the Nango client test: ${skipReason}`);

const require = createRequire(pathToFileURL(path.join(here, 'package.json')));
const { Nango } = skipReason ? {} : await import(pathToFileURL(require.resolve('@nangohq/node')));

// ---- Helpers ----

async function waitFor(what, condition, timeoutMs = DEADLINE_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

class Daemon {
  constructor(configPath, logPath) {
    this.configPath = configPath;
    this.logPath = logPath;
  }

  // Starts the daemon and resolves with its port once it logs that it listens.
  async start() {
    const log = fs.openSync(this.logPath, 'a');
    this.child = spawn(daemonPath, ['--config', this.configPath], { stdio: ['ignore', 'ignore', log] });
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    const startedAt = fs.statSync(this.logPath).size;
    this.port = await waitFor('the daemon to listen', () => {
      const text = fs.readFileSync(this.logPath, 'utf8').slice(startedAt);
      for (const line of text.split('\n')) {
        if (!line) continue;
        const entry = JSON.parse(line);
        if (entry.msg === 'listening') return entry.port;
        if (entry.level === 'error') throw new Error(`the daemon failed: ${line}`);
      }
      return null;
    });
    return this.port;
  }

  async stop(signal) {
    this.child.kill(signal);
    return this.exited;
  }
}

// The HTTP status and error code of a rejected client call.
async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return { status: e.response?.status, code: e.response?.data?.code, data: e.response?.data };
  }
  assert.fail('the call should have been rejected');
}

// ---- The test ----

describe('@nangohq/node against syncschedd', { skip: skipReason ?? false }, () => {
  let dir;
  let runsFile;
  let daemon;
  let nango;

  const runs = () =>
    fs.existsSync(runsFile)
      ? fs.readFileSync(runsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
      : [];
  const runsOf = (connection, sync, variant, mode) =>
    runs().filter((r) => r.connection === connection && r.sync === sync && r.variant === variant && r.mode === mode)
      .length;
  const item = async (sync, connection = 'acme') => {
    const { syncs } = await nango.syncStatus('github', [sync], connection);
    assert.equal(syncs.length, 1, JSON.stringify(syncs));
    return syncs[0];
  };
  const settled = async () =>
    waitFor('every run to end', async () => {
      const { syncs } = await nango.syncStatus('github', '*');
      return syncs.every((s) => s.status !== 'RUNNING');
    });

  let pgDatabase = null; // on PostgreSQL: the test's database, dropped at the end

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'syncschedd-nango-'));
    runsFile = path.join(dir, 'runs.jsonl');
    const command = ['/bin/sh', path.join(here, 'record-run.sh'), runsFile];
    let database = path.join(dir, 'syncsched.db');
    if (onPostgres) {
      const out = execFileSync(process.env.SYNCSCHED_PG_SERVER, ['createdb', process.env.SYNCSCHED_TEST_PG_DIRFILE], {
        encoding: 'utf8',
      }).trim();
      [pgDatabase, database] = out.split(' ');
      assert.match(database, /^postgresql:\/\//);
    }
    const config = {
      listen: '127.0.0.1:0',
      database,
      api_keys: [{ key: KEY, scopes: ['*'] }, { key: 'read-only', scopes: ['environment:syncs:read'] }],
      shutdown_grace: '5s',
      integrations: {
        github: {
          syncs: {
            issues: { runs: 'every 1h', auto_start: true, command, timeout: '1m' },
            pulls: { runs: 'every 1h', auto_start: false, command },
          },
          connections: ['acme'],
        },
      },
    };
    const configPath = path.join(dir, 'syncschedd.json');
    fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
    daemon = new Daemon(configPath, path.join(dir, 'daemon.log'));
    const port = await daemon.start();
    nango = new Nango({ host: `http://127.0.0.1:${port}`, secretKey: KEY });
  });

  after(async () => {
    if (daemon?.child && daemon.child.exitCode === null && daemon.child.signalCode === null) {
      await daemon.stop('SIGKILL');
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    if (pgDatabase) {
      execFileSync(process.env.SYNCSCHED_PG_SERVER, ['dropdb', process.env.SYNCSCHED_TEST_PG_DIRFILE, pgDatabase]);
    }
  });

  test('auto-started syncs run at once with the documented environment', async () => {
    await waitFor('the first run of issues', () => runsOf('acme', 'issues', 'base', 'incremental') === 1);
    const run = runs()[0];
    assert.equal(run.integration, 'github');
    assert.match(run.slot, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(run.run_id.length > 0);
    await settled();
  });

  test('syncStatus answers Nango\'s shape', async () => {
    const { syncs } = await nango.syncStatus('github', '*', 'acme');
    assert.equal(syncs.length, 2);
    const issues = syncs.find((s) => s.name === 'issues');
    const pulls = syncs.find((s) => s.name === 'pulls');
    assert.equal(typeof issues.id, 'string');
    assert.equal(issues.connection_id, 'acme');
    assert.equal(issues.variant, 'base');
    assert.equal(issues.status, 'SUCCESS');
    assert.equal(issues.frequency, '1h');
    assert.match(issues.nextScheduledSyncAt, /Z$/);
    assert.match(issues.finishedAt, /Z$/);
    assert.equal(issues.latestExecutionStatus, 'SUCCESS');
    assert.deepEqual(issues.latestResult, {});
    assert.deepEqual(issues.recordCount, {});
    assert.equal(issues.error, null);
    // syncsched's own "why not" fields pass through the client untouched.
    assert.equal(issues.waitingSince, null);
    assert.equal(issues.nextRetryAt, null);
    assert.ok(Array.isArray(issues.decisions));
    assert.equal(pulls.status, 'PAUSED');
    assert.equal(pulls.nextScheduledSyncAt, null);
    assert.equal(pulls.finishedAt, null);
    // Without a connection, every connection's schedules.
    assert.equal((await nango.syncStatus('github', ['issues'])).syncs.length, 1);
  });

  test('startSync runs a paused sync at once and schedules it', async () => {
    const res = await nango.startSync('github', ['pulls'], 'acme');
    assert.equal(res.status, 200);
    assert.deepEqual(res.data, { success: true });
    await waitFor('the run of pulls', () => runsOf('acme', 'pulls', 'base', 'incremental') === 1);
    const pulls = await item('pulls');
    assert.notEqual(pulls.nextScheduledSyncAt, null);
    // Starting a started sync does nothing.
    await nango.startSync('github', ['issues'], 'acme');
    assert.equal(runsOf('acme', 'issues', 'base', 'incremental'), 1);
    await settled();
  });

  test('pauseSync pauses', async () => {
    await nango.pauseSync('github', ['issues'], 'acme');
    const issues = await item('issues');
    assert.equal(issues.status, 'PAUSED');
    assert.equal(issues.nextScheduledSyncAt, null);
  });

  test('triggerSync: incremental, {reset: true}, and the legacy sync_mode', async () => {
    const cases = [
      [undefined, 'incremental'],
      [{ reset: true }, 'full_resync'],
      [{ reset: false }, 'incremental'],
      ['full_refresh', 'full_resync'],
      ['full_refresh_and_clear_cache', 'full_resync'],
      ['incremental', 'incremental'],
      [true, 'full_resync'],
      [false, 'incremental'],
    ];
    for (const [opts, mode] of cases) {
      const before = runsOf('acme', 'issues', 'base', mode);
      const res = await nango.triggerSync('github', ['issues'], 'acme', opts);
      assert.equal(res.status, 200, JSON.stringify(opts));
      await waitFor(`a ${mode} run for ${JSON.stringify(opts)}`, () => runsOf('acme', 'issues', 'base', mode) === before + 1);
      await settled();
    }
    // A triggered paused schedule stays paused.
    assert.equal((await item('issues')).status, 'PAUSED');
  });

  test('updateSyncConnectionFrequency sets and reverts', async () => {
    assert.deepEqual(await nango.updateSyncConnectionFrequency('github', 'pulls', 'acme', 'every 2 hours'), {
      frequency: '2h',
    });
    assert.equal((await item('pulls')).frequency, '2h');
    assert.deepEqual(await nango.updateSyncConnectionFrequency('github', 'pulls', 'acme', null), { frequency: '1h' });
    assert.equal((await item('pulls')).frequency, '1h');
    const bad = await rejection(nango.updateSyncConnectionFrequency('github', 'pulls', 'acme', 'every fortnight'));
    assert.equal(bad.status, 400);
    assert.equal(bad.code, 'invalid_frequency');
  });

  test('createSyncVariant, then the variant in every selector form', async () => {
    const created = await nango.createSyncVariant({
      provider_config_key: 'github',
      connection_id: 'acme',
      name: 'pulls',
      variant: 'eu',
    });
    assert.equal(created.name, 'pulls');
    assert.equal(created.variant, 'eu');
    assert.equal(typeof created.id, 'string');
    assert.equal((await item('pulls::eu')).id, created.id);
    assert.equal((await item({ name: 'pulls', variant: 'eu' })).status, 'PAUSED');
    await nango.startSync('github', [{ name: 'pulls', variant: 'eu' }], 'acme');
    await waitFor('the run of pulls::eu', () => runsOf('acme', 'pulls', 'eu', 'incremental') === 1);
    await nango.updateSyncConnectionFrequency('github', { name: 'pulls', variant: 'eu' }, 'acme', '30m');
    assert.equal((await item('pulls::eu')).frequency, '30m');
    assert.equal((await item('pulls')).frequency, '1h');
    const again = await rejection(
      nango.createSyncVariant({ provider_config_key: 'github', connection_id: 'acme', name: 'pulls', variant: 'eu' }),
    );
    assert.equal(again.status, 409);
    assert.equal(again.code, 'sync_variant_already_exists');
    await settled();
  });

  test('the state survives kill -9 and a restart re-runs nothing', async () => {
    const before = (await nango.syncStatus('github', '*')).syncs;
    const runCount = runs().length;
    const { signal } = await daemon.stop('SIGKILL');
    assert.equal(signal, 'SIGKILL');

    const port = await daemon.start();
    nango = new Nango({ host: `http://127.0.0.1:${port}`, secretKey: KEY });
    const afterRestart = (await nango.syncStatus('github', '*')).syncs;
    const summary = (syncs) =>
      syncs
        .map((s) => `${s.connection_id}/${s.name}::${s.variant} ${s.status} ${s.frequency} ${s.id} next=${s.nextScheduledSyncAt}`)
        .sort();
    assert.deepEqual(summary(afterRestart), summary(before));
    assert.equal(runs().length, runCount, 'a restart starts no run');
  });

  test('deleteSyncVariant', async () => {
    const res = await nango.deleteSyncVariant({
      provider_config_key: 'github',
      connection_id: 'acme',
      name: 'pulls',
      variant: 'eu',
    });
    assert.deepEqual(res, { success: true });
    const gone = await rejection(nango.syncStatus('github', ['pulls::eu'], 'acme'));
    assert.equal(gone.status, 400);
    assert.equal(gone.code, 'unknown_sync');
    const again = await rejection(
      nango.deleteSyncVariant({ provider_config_key: 'github', connection_id: 'acme', name: 'pulls', variant: 'eu' }),
    );
    assert.equal(again.status, 404);
    assert.equal(again.code, 'unknown_variant');
  });

  test('errors come back with their status and code', async () => {
    let e = await rejection(nango.startSync('github', ['nope'], 'acme'));
    assert.equal(e.status, 400);
    assert.equal(e.code, 'unknown_sync');
    assert.equal(typeof e.data.message, 'string');
    e = await rejection(nango.startSync('gitlab', ['issues'], 'acme'));
    assert.equal(e.status, 400);
    assert.equal(e.code, 'unknown_provider_config');
    e = await rejection(nango.pauseSync('github', ['issues'], 'nobody'));
    assert.equal(e.status, 404);
    assert.equal(e.code, 'unknown_connection');
    e = await rejection(nango.syncStatus('github', '*', 'nobody'));
    assert.equal(e.status, 404);
    const stranger = new Nango({ host: `http://127.0.0.1:${daemon.port}`, secretKey: 'wrong' });
    e = await rejection(stranger.syncStatus('github', '*'));
    assert.equal(e.status, 401);
    const reader = new Nango({ host: `http://127.0.0.1:${daemon.port}`, secretKey: 'read-only' });
    assert.equal((await reader.syncStatus('github', '*')).syncs.length, 2);
    e = await rejection(reader.triggerSync('github', ['issues'], 'acme'));
    assert.equal(e.status, 403);
    assert.equal(e.code, 'missing_scope');
  });

  test('deleteConnection', async () => {
    const res = await nango.deleteConnection('github', 'acme');
    assert.equal(res.status, 200);
    assert.deepEqual(res.data, { success: true });
    const e = await rejection(nango.syncStatus('github', '*', 'acme'));
    assert.equal(e.status, 404);
    assert.equal(e.code, 'unknown_connection');
    assert.equal((await rejection(nango.deleteConnection('github', 'acme'))).status, 404);
  });

  test('SIGTERM shuts down with status 0', async () => {
    const { code } = await daemon.stop('SIGTERM');
    assert.equal(code, 0);
  });
});
