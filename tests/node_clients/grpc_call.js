// Call an rpc of a KRT's gRPC entrypoint with the gRPC team's Node.js client, as a user of the KRT would.
// usage: node grpc_call.js ADDRESS PROTO SERVICE RPC REQUESTS_JSON
//   REQUESTS_JSON: a JSON array of request objects, all sent at once.
// Prints one JSON line: an array of {response} or {code, details} with the call's krt-tracking-id.
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, protoPath, serviceName, rpc, requestsJson] = process.argv.slice(2);
const definition = protoLoader.loadSync(protoPath, { keepCase: true, defaults: true });
const Service = serviceName.split(".").reduce((node, part) => node[part], grpc.loadPackageDefinition(definition));
const client = new Service(address, grpc.credentials.createInsecure());

function call(request) {
  // The callback and the "status" event (which carries the trailing metadata) come in either order.
  return new Promise((resolve) => {
    let result = null;
    let trackingId = null;
    const settle = () => { if (result && trackingId !== null) resolve({ ...result, trackingId }); };
    const pending = client[rpc](request, { deadline: Date.now() + 30000 }, (error, response) => {
      result = error ? { code: grpc.status[error.code], details: error.details } : { response };
      settle();
    });
    pending.on("status", (status) => { trackingId = trackingOf(status.metadata); settle(); });
  });
}

function trackingOf(metadata) {
  const values = metadata ? metadata.get("krt-tracking-id") : [];
  return values.length ? String(values[0]) : "";
}

Promise.all(JSON.parse(requestsJson).map(call)).then((results) => {
  console.log(JSON.stringify(results));
  client.close();
});
