// Fastify compiles every route's schema when the server gets ready: loading ajv and compiling some
// thirty schemas cost about 100 ms of every router start, before the API answers. These are the
// same compilers (Fastify's own, @fastify/ajv-compiler, with the server's ajv options), loaded and
// run a few seconds after start, in the background, or at a route's first request if that is
// sooner. What a request is checked against, and the errors it gets, do not change
// (test/unit/router/api-fuzz and api tests; api.test.ts also builds the API with eager
// compilation, so a bad schema cannot hide until used).
//
// The serializers' compiler (fast-json-stringify, which loads ajv too) Fastify would load when the
// server is made; no route here has a response schema, so it is loaded only if one ever does. Both
// compilers stay outside the router's bundle (cli/bundle.ts): V8 would parse their half a megabyte
// of source at every start.
import { createRequire } from 'node:module';
import type { BuildCompilerFromPool } from '@fastify/ajv-compiler';
import type { SerializerFactory } from '@fastify/fast-json-stringify-compiler';

type Build = ReturnType<BuildCompilerFromPool>;
type Validate = ((this: unknown, ...args: unknown[]) => unknown) & { errors?: unknown };

const require = createRequire(import.meta.url);

/**
 * What waits to be compiled once the router has started (a few seconds on, one schema per turn of
 * the event loop), so that a route's first request does not pay for it either.
 */
const queue: (() => void)[] = [];
let timer: NodeJS.Timeout | null = null;
function later(fn: () => void): void {
  queue.push(fn);
  timer ??= setTimeout(function next() {
    const f = queue.shift();
    if (!f) {
      timer = null;
      return;
    }
    f();
    setImmediate(next);
  }, 3000).unref();
}

/** For Fastify's `schemaController.compilersFactory.buildValidator`. */
export const lazyValidatorBuilder: BuildCompilerFromPool = (externalSchemas, options) => {
  let build: Build | null = null;
  const compile = (route: Parameters<Build>[0]): Validate => {
    build ??= (require('@fastify/ajv-compiler') as () => BuildCompilerFromPool)()(externalSchemas, options);
    return build(route) as Validate;
  };
  const lazyBuild = (route: Parameters<Build>[0]): Validate => {
    let validate: Validate | null = null;
    // Fastify reads the errors from the function it called, as ajv leaves them there. Whatever it
    // passes (ajv's data context, its `this`) goes through unchanged.
    const lazy: Validate = function (this: unknown, ...args: unknown[]) {
      validate ??= compile(route);
      const result = validate.apply(this, args);
      lazy.errors = validate.errors;
      return result;
    };
    later(() => {
      try {
        validate ??= compile(route);
      } catch {
        // the route's first request reports it
      }
    });
    return lazy;
  };
  return lazyBuild as Build;
};

/** For Fastify's `schemaController.compilersFactory.buildSerializer`: Fastify's own, loaded at its first use. */
export const lazySerializerBuilder: SerializerFactory = (externalSchemas, options) => {
  let build: ReturnType<SerializerFactory> | null = null;
  return (route) => {
    build ??= (
      require('@fastify/fast-json-stringify-compiler') as { SerializerSelector: () => SerializerFactory }
    ).SerializerSelector()(externalSchemas, options);
    return build(route);
  };
};
