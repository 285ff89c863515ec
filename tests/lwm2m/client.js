// A real, third-party LwM2M client for Drover's end-to-end test (tests/tests/lwm2m.rs):
// lwm2m-node-lib from npm. It registers with an endpoint name, serves /3/0 (Device) from
// its object registry, answers Read (text), Write and Execute, and prints one line per
// event for the test to read. Commands on stdin: `update`, `deregister`, `battery N`.
//
//     node client.js 127.0.0.1 5683 urn:dev:os:test-1
'use strict';

const lwm2m = require('lwm2m-node-lib');
const readline = require('readline');
const client = lwm2m.client;
const [host, port, endpoint] = process.argv.slice(2);

client.init({
    client: { lifetime: '300', version: '1.0', logLevel: 'FATAL', observe: { period: 3000 }, ipProtocol: 'udp4' },
});

const device = [
    [0, 'Open Mobile Alliance'],
    [1, 'Lightweight M2M Client'],
    [2, '345000123'],
    [3, '1.0'],
    [9, '87'],
    [10, '15'],
    [14, '+02:00'],
];

function step(list, done) {
    if (list.length === 0) return done();
    const [fn, ...rest] = list;
    fn((error) => (error ? fail(error) : step(rest, done)));
}

function fail(error) {
    console.log('error ' + (error && error.message ? error.message : JSON.stringify(error)));
    process.exit(1);
}

const setup = [(cb) => client.registry.create('/3/0', cb)].concat(
    device.map(([id, value]) => (cb) => client.registry.setResource('/3/0', id, value, cb)),
);

step(setup, () => {
    client.register(host, Number(port), '', endpoint, (error, info) => {
        if (error) return fail(error);
        console.log('registered ' + info.location);
        client.setHandler(info.serverInfo, 'write', (type, id, resource, value, cb) => {
            console.log(`write /${type}/${id}/${resource} ${value}`);
            client.registry.setResource(`/${type}/${id}`, resource, value, cb);
        });
        client.setHandler(info.serverInfo, 'execute', (type, id, resource, args, cb) => {
            console.log(`execute /${type}/${id}/${resource}`);
            cb(null);
        });
        client.setHandler(info.serverInfo, 'read', (type, id, resource, value, cb) => {
            console.log(`read /${type}/${id}/${resource}`);
            cb(null, value);
        });
        const input = readline.createInterface({ input: process.stdin });
        input.on('line', (line) => {
            const [command, arg] = line.trim().split(' ');
            if (command === 'update') {
                client.update(info, (e) => console.log(e ? 'error update ' + e.message : 'updated'));
            } else if (command === 'deregister') {
                client.unregister(info, (e) => {
                    console.log(e ? 'error deregister ' + e.message : 'deregistered');
                    process.exit(0);
                });
            } else if (command === 'battery') {
                client.registry.setResource('/3/0', 9, arg, () => console.log('battery ' + arg));
            }
        });
    });
});
