"""Every public method of AsyncClient and AsyncSession against a real server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from client_support import Model

from rnnserve_client import AsyncClient, AsyncSession, NotFound, SessionInfo
from rnnserve_client._local import LocalServer

RTOL, ATOL = 1e-4, 1e-3


def test_async_client_end_to_end(server: LocalServer, model: Model) -> None:
    x = model.series(10)

    async def main() -> None:
        async with AsyncClient(server.target, timeout=20) as c:
            await c.wait_until_ready(timeout=5)
            assert await c.health() == "SERVING"
            names = [m.name for m in await c.list_models()]
            assert model.name in names
            meta = await c.model_metadata(model.name)
            assert meta.input_features == model.input_features
            ref = await c.predict(model.name, x)
            assert ref.shape == (10, model.output_features)

            async with c.session(model.name) as s:
                assert isinstance(s, AsyncSession)
                assert not s.started
                y1 = await s.step(x[:4])
                outs = [o async for o in s.stream([x[4:7], x[7:]])]
                assert s.step_index == 10
                np.testing.assert_allclose(np.concatenate([y1, *outs]), ref, rtol=RTOL, atol=ATOL)
                np.testing.assert_allclose(await s.predict(x), ref, rtol=RTOL, atol=ATOL)
                info = await s.info()
                assert isinstance(info, SessionInfo)
                assert info.step == 10
                assert (await c.get_session(s.id)).step == 10
                assert s.id in {i.session_id for i in await c.list_sessions(model.name)}
                assert len(await c.list_sessions(limit=1)) == 1

                f = await s.forecast(4)
                assert f.shape == (4, model.output_features)
                np.testing.assert_allclose(await c.forecast(s.id, 4), f, rtol=RTOL, atol=ATOL)

                snap = await c.export_session(s.id)
                assert snap.info.step == 10
                assert (await c.import_session(snap, overwrite=True)).step == 10
                attached = await c.attach(s.id)
                assert attached.step_index == 10
                assert attached.model == model.name

                await s.reset()
                assert s.step_index == 0
                np.testing.assert_allclose(await s.step(x[:4]), y1, rtol=RTOL, atol=ATOL)
                assert (await c.reset_session(s.id)).step == 0
            with pytest.raises(NotFound):
                await c.get_session(s.id)

            other = c.session(model.name)
            await other.step(x[:2])
            assert (await c.close_session(other.id)).step == 2
            await other.close()  # already gone on the server: still fine

            async def chunks() -> AsyncIterator[np.ndarray]:
                for i in range(0, 10, 5):
                    yield x[i : i + 5]

            third = c.session(model.name)
            got = [o async for o in third.stream(chunks())]
            np.testing.assert_allclose(np.concatenate(got), ref, rtol=RTOL, atol=ATOL)
            await third.step(x[:1], end=True)
            assert not third.started

            frame = await c.frame(model.name, ["af-0", "af-1"], np.stack([x, x]), start=True)
            assert frame.ok
            assert frame.steps == [10, 10]
            np.testing.assert_allclose(frame.y[1], ref, rtol=RTOL, atol=ATOL)
            frame = await c.frame(model.name, ["af-0", "af-1"], np.stack([x, x])[:, :1], end=True)
            assert frame.steps == [11, 11]
        with pytest.raises(RuntimeError, match="client is closed"):
            await c.list_models()

    asyncio.run(main())


def test_async_many_sessions_concurrently(server: LocalServer, model: Model) -> None:
    x = model.series(6)

    async def one(c: AsyncClient) -> np.ndarray:
        async with c.session(model.name) as s:
            return np.concatenate([await s.step(x[:3]), await s.step(x[3:])])

    async def main() -> None:
        async with AsyncClient(server.target) as c:
            ref = await c.predict(model.name, x)
            results = await asyncio.gather(*(one(c) for _ in range(16)))
            for y in results:
                np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)

    asyncio.run(main())


def test_async_unary_transport(server: LocalServer, model: Model) -> None:
    x = model.series(5)

    async def main() -> None:
        async with AsyncClient(server.target, use_stream=False) as c:
            s = c.session(model.name)
            y = np.concatenate([await s.step(x[:2]), await s.step(x[2:])])
            np.testing.assert_allclose(y, await c.predict(model.name, x), rtol=RTOL, atol=ATOL)
            await s.close()

    asyncio.run(main())
