/**
 * Run before every test file (vitest --setupFiles): the folders a file made
 * with tempDir() are removed after its last test, whether or not the file
 * says so itself (hooks run as a stack, so this runs after the file's own
 * afterAll hooks, once its processes are stopped).
 */
import { afterAll } from 'vitest';
import { cleanTemp } from './helpers.js';

afterAll(cleanTemp);
