/** The suite's vitest settings (scripts/test.sh and `npm run test:unit` pass --config test/vitest.config.ts). */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Every test file's temporary folders are removed after its last test (test/setup.ts).
    setupFiles: [fileURLToPath(new URL('./setup.ts', import.meta.url))],
  },
});
