// A small order flow through a client generated from orderflow's
// /openapi.json: `openapi-typescript` turns the document into `api.d.ts`
// (the paths, bodies, parameters and answers as TypeScript types),
// `openapi-fetch` is the typed fetch wrapper over it, and `tsc --strict`
// must accept this file before it runs. A wrong or missing schema in the
// document (a field renamed, an answer undocumented, a header missing)
// fails the type check or the asserts below.
//
// Usage: node client-flow.js BASE_URL ADMIN_EMAIL ADMIN_PASSWORD
import createClient from "openapi-fetch";
import type { paths, components } from "./api.js";

type Order = components["schemas"]["OrderView"];
type OrderStatus = components["schemas"]["OrderStatus"];
// Node's one global used here, declared rather than pulling in @types/node.
declare const process: { argv: string[] };

const [base, adminEmail, adminPassword] = process.argv.slice(2);
const client = createClient<paths>({ baseUrl: base });

function check(condition: unknown, message: string): asserts condition {
  if (!condition) {
    throw new Error(message);
  }
}

const email = `ts-${Date.now()}@example.com`;
const password = "a generated client's password";

const registered = await client.POST("/api/v1/auth/register", {
  body: { email, password, name: "Generated Client" },
});
check(registered.response.status === 201 && registered.data, `register: ${registered.response.status}`);
check(registered.data.email === email, "register echoes the e-mail");

// The document's rules, as the generated types see them: a refused body is
// a problem document with the documented `type`.
const weak = await client.POST("/api/v1/auth/register", {
  body: { email: `weak-${email}`, password: "short", name: "Weak" },
});
check(weak.response.status === 422 && weak.error, `weak password: ${weak.response.status}`);
check(weak.error.type === "https://orderflow.dev/problems/validation", `problem type ${weak.error.type}`);
check(weak.error.field === "password", `problem field ${weak.error.field}`);

const login = async (user: string, secret: string) => {
  const { data, response } = await client.POST("/api/v1/auth/login", {
    body: { email: user, password: secret, device: "generated client" },
  });
  check(response.status === 200 && data, `login: ${response.status}`);
  return data.access_token;
};
const token = await login(email, password);
const admin = await login(adminEmail, adminPassword);
const auth = (bearer: string) => ({ Authorization: `Bearer ${bearer}` });

const created = await client.POST("/api/v1/products", {
  headers: auth(admin),
  body: { sku: `TS-${Date.now()}`, name: "Typed mug", price_cents: 1299, currency: "EUR", stock: 10 },
});
check(created.response.status === 201 && created.data, `create product: ${created.response.status}`);
const product = created.data;

const fetched = await client.GET("/api/v1/products/{id}", { params: { path: { id: product.id } } });
check(fetched.data?.price_cents === 1299, "the product reads back");

const key = `ts-order-${Date.now()}`;
const place = () =>
  client.POST("/api/v1/orders", {
    headers: auth(token),
    params: { header: { "Idempotency-Key": key } },
    body: { items: [{ product_id: product.id, quantity: 2 }] },
  });
const placed = await place();
check(placed.response.status === 201 && placed.data, `place order: ${placed.response.status}`);
const order: Order = placed.data;
check(order.total_cents === 2598 && order.status === "pending", `order ${JSON.stringify(order)}`);
const again = await place();
check(again.data?.id === order.id, "the same Idempotency-Key gets the same order");

// The consumers run in the same server: the order becomes final. The
// status is the schema's enum (held, confirmed, …), not the "pending" the
// check above narrowed it to.
let status: OrderStatus = order.status;
for (let attempt = 0; attempt < 100 && status !== "confirmed"; attempt++) {
  await new Promise((resolve) => setTimeout(resolve, 100));
  const { data } = await client.GET("/api/v1/orders/{id}", {
    headers: auth(token),
    params: { path: { id: order.id } },
  });
  check(data, "the order reads back");
  status = data.status;
}
check(status === "confirmed", `order ended ${status}`);

const list = await client.GET("/api/v1/orders", { headers: auth(token), params: { query: { limit: 10 } } });
check(list.data?.items.some((o) => o.id === order.id), "the order is listed");

const missing = await client.GET("/api/v1/orders/{id}", {
  headers: auth(token),
  params: { path: { id: "01950000-0000-7000-8000-00000000dead" } },
});
check(missing.response.status === 404 && missing.error?.type === "https://orderflow.dev/problems/not-found", "404 problem");

const loggedOut = await client.POST("/api/v1/auth/logout", { headers: auth(token) });
check(loggedOut.response.status === 204, `logout: ${loggedOut.response.status}`);

console.log(`generated client: order ${order.id} ${status}`);
