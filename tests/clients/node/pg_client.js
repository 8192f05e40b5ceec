// node-postgres through rowgate; run by tests/clients.rs.
//
// Usage: node pg_client.js PROXY_URL NATIVE_URL
//
// Every step runs twice: through rowgate as a policy user, and on a direct
// connection as that user's native row-level-security role (the oracle).
// Prints one `name=value` line per fact seen through rowgate, and
// `name.same=true|false` telling whether the oracle saw the same; the Rust
// test asserts on those lines. Exits non-zero only if it crashes.

'use strict';

const { Client } = require('pg');

async function sqlstate(promise) {
  try {
    await promise;
    return 'ok';
  } catch (e) {
    return e.code || `error without SQLSTATE: ${e.message}`;
  }
}

async function steps(connectionString) {
  const facts = {};
  const client = new Client({ connectionString });
  await client.connect();
  try {
    // Parameterized queries ($1): the extended protocol, unnamed statement.
    let r = await client.query('SELECT count(*)::int AS n FROM orders WHERE id > $1', [0]);
    facts.param_orders = String(r.rows[0].n);
    r = await client.query('SELECT count(*)::int AS n FROM orders WHERE id > $1', [40]);
    facts.param_orders_over_40 = String(r.rows[0].n);
    r = await client.query(
      'SELECT id, name FROM merchants WHERE id = ANY($1::int[]) ORDER BY id',
      [[1, 2, 4, 7, 11]],
    );
    facts.param_merchants = r.rows.map((row) => `${row.id}:${row.name}`).join('|');
    r = await client.query('SELECT name FROM countries WHERE name = $1 OR name = $2 ORDER BY name', [
      'Vietnam',
      'France',
    ]);
    facts.param_countries = r.rows.map((row) => row.name).join('|');

    // A named prepared statement, executed twice.
    const named = { name: 'orders_by_id', text: 'SELECT id FROM orders WHERE id > $1 ORDER BY id' };
    r = await client.query({ ...named, values: [0] });
    facts.named_first = r.rows.map((row) => row.id).join(',');
    r = await client.query({ ...named, values: [30] });
    facts.named_second = r.rows.map((row) => row.id).join(',');

    // A refusal, parameterized and simple, and the session afterwards.
    facts.refused_param = await sqlstate(
      client.query('SELECT amount FROM hr.salaries WHERE merchant_id = $1', [1]),
    );
    facts.refused_simple = await sqlstate(client.query('SELECT * FROM hr.salaries'));
    r = await client.query('SELECT $1::int + 1 AS n, count(*)::int AS m FROM merchants', [41]);
    facts.after_refusal = `${r.rows[0].n}/${r.rows[0].m}`;
  } finally {
    await client.end();
  }
  return facts;
}

async function main() {
  const [proxy, native] = process.argv.slice(2);
  const through = await steps(proxy);
  const oracle = await steps(native);
  for (const [name, value] of Object.entries(through)) {
    console.log(`${name}=${value}`);
    console.log(`${name}.same=${value === oracle[name]}`);
  }
  console.log('done=true');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
