// Validates Kubernetes objects (multi-document YAML on stdin, as `kustomize build deploy/k8s`
// prints them) against Kubernetes' own schemas and the Flink Kubernetes Operator's CRD schemas,
// as packaged by kubernetes-models. An object of a kind with no schema here is an error, not a pass.
// Prints one line per object; exits 1 naming each invalid field.
import { parseAllDocuments } from "yaml";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const docs = parseAllDocuments(Buffer.concat(chunks).toString("utf8"));
let failed = 0;
let checked = 0;
for (const doc of docs) {
  if (doc.errors.length) {
    console.log(`YAML error: ${doc.errors.map((e) => e.message).join("; ")}`);
    failed++;
    continue;
  }
  const obj = doc.toJS();
  if (obj === null) continue;
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
  const where = `${obj.kind} ${obj.metadata?.name}`;
  const module = group === "flink.apache.org"
    ? `@kubernetes-models/flink/${group}/${version}/${obj.kind}`
    : `kubernetes-models/${group ? `${group}/` : ""}${version}/${obj.kind}`;
  let Model;
  try {
    Model = (await import(module))[obj.kind];
  } catch {
    console.log(`${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`${where}: valid ${obj.apiVersion}`);
    checked++;
  } catch (e) {
    console.log(`${where}: ${e.message}`);
    failed++;
  }
}
console.log(`${checked} valid, ${failed} invalid`);
process.exit(failed || checked === 0 ? 1 : 0);
