// List the NATS services on a server with the NATS team's Node.js client (its services API client), as
// `nats micro ping|info|stats` do. usage: node nats_services.js NATS_URL [NAME]
// Prints one JSON object: {ping: [...], info: [...], stats: [...]}, each the responses received.
const { connect } = require("nats");

async function collect(iterator) {
  const found = [];
  for await (const response of await iterator) found.push(response);
  return found;
}

(async () => {
  const [url, name] = process.argv.slice(2);
  const nc = await connect({ servers: url });
  const client = nc.services.client({ maxWait: 1500 });
  const result = {
    ping: await collect(client.ping(name)),
    info: await collect(client.info(name)),
    stats: await collect(client.stats(name)),
  };
  console.log(JSON.stringify(result));
  await nc.close();
})().catch((error) => { console.error(error); process.exit(1); });
