// Tests inside workerd (the Workers runtime), against the built worker (build/index.js).
// WebSockets with Durable Objects need isolatedStorage off (a known limit of the plugin).
import { defineConfig } from "vitest/config";
import { cloudflareTest } from "@cloudflare/vitest-plugin";

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      isolatedStorage: false,
    }),
  ],
  test: { include: ["test/**/*.test.mjs"], testTimeout: 20000 },
});
