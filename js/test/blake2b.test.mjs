// BLAKE2b and binding tags against Python's hashlib.blake2b and heserve.protocol.binding.tag.
// Vectors computed with Python 3 (see the comment at each column). No server needed.

import assert from 'node:assert/strict'
import test from 'node:test'

import { Blake2b, fromHex, toHex } from '../src/blake2b.js'
import { bindingTag } from '../src/binding.js'

// data(n) = bytes((i * 31 + 7) & 255 for i in range(n)); key = bytes((i * 17 + 3) & 255 for i in range(32))
const data = (n) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) & 255)
const key = Uint8Array.from({ length: 32 }, (_, i) => (i * 17 + 3) & 255)

// [n, binding.tag(key, data(n)), blake2b(data).hexdigest(), blake2b(data, key=key, digest_size=16),
//  blake2b(data, key=key[:20], digest_size=32, salt=b"saltsalt", person=b"heserve-bind")]
const VECTORS = [
  [0, 'cfad291acf8cc55de4b0a292b7956ea5', '786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419d25e1031afee585313896444934eb04b903a685b1448b755d56f701afe9be2ce', 'da227b2846b58fde103cea69d4b3d8ca', 'a79e610bcb72fcec9960865f583fa89adf31339c89824f47b1ada4128407d2a1'],
  [1, 'ff654a36747c7fbaa4942e9c4d2ab970', 'dc19b62fbd4e480a12134892649b0c86c21540830bf61aa81e7e13868e7d23ed78ed66b94f6ea8bb779261b98782745fc85ad1dfe9b07859ed77c28b94eaac85', 'c20bce61fdc71afc46645e63531d6268', 'a7b15767cbe8b67197d75e19555b216d3557b3371f581d3529ed267ce18c6faf'],
  [3, '28fe0a2bb59649424653835ad2faf2bd', '57dabe5d7fb368a51f996e86e6d682e615ba736a219b5edd5a4374fe2b7bea42d7889c0dfec6d3f47717738e3479a688c233f6bf296e6b78b542959ba047cfd3', 'af5584956b2a67067f12a6c2b553d0cf', 'f6698bf836fc341d75b7b6ae125446ef9328dcd134df4ff1d440419b0becb3df'],
  [127, 'a5082898b187a976d98e439672fa0f4c', '3dd556bc15bb8a1c16ce9bc28f245325f5bfc50e84f44c539b7172295d22d81b613a19324b278b3a06dca69a7c9f7d38b9862fa8f2230a9818fe126ef207aa17', '7bfa2a7230c83b2b206b76f7e94d0190', 'e80621e4952a4561745fadab42dae81366233fdbefec323122dd6dfc1a7603c4'],
  [128, '4aaa727690ba8ae3e594767be4c6f362', '88134c9c2bda5481ec42b0d53611231ab7c21ccbbbcf5bc813acffea3eef47c1bb198748d222a9a0d0899631eb39b8c63d61ab1bc8128196e615dc9032ebf5bf', '10a4b6c7e252ec6bd9f8820ce3032c69', 'd7fe80a606fbc5504655cf469d8ac803f0ba71242bd5b3eeb2d42e7846c6e8a2'],
  [129, 'ec16cf42de64c361a27fe3621022a646', '458471021bb1880be73a9a9054316b4b5b83cd27e0ece6f76987d52eb53ccea9ea89e5f1d5a45343536d439e4a125e733c41f2aef79aa299d076a10fc3b283f2', '0334d57705da692fc8f8a5d7b37bb513', '1b210022282bd4704770d1dfa6f5c862a249ac9b83ad6636f3aa378b90b416cf'],
  [255, 'f2370e38793f6dab912aa9472a36d20d', 'ea9d73087e808d78c1ca9232ed9d191d2a6f53d0c47cc4a68771f4b02ed44f48986b7b580854daefcfc1368e58620b7efa1eb22d92f9e52f55ee66ef2fbda14b', 'f76d7ce19ae73f5a191fc84944490cc9', '185200a0414c4d7988b7a45391c1de0cad5e0e99e8d546463e0f7b834b435d2a'],
  [256, '2f5ddf823158e7de0d6657b5d2a48062', '8055742fadd993ad58a28ef85b80e63059a8944b9fc74e65ff7dbbc6a133ac5fa7ea85ff285e7e93d1cb52e1e6ec49cc6a2c56183a953b91982dfcb6aee9e0fd', '6968657f9981eacfedec419cf401b425', '02238928e7f008048cb010a32f823c36a08b2a1ac4598f86021201bf9ddc5271'],
  [1000, 'b0d2a7a4e30ed7da400399c3d673dfcd', '82dd7f967c8cf7d791ab973f395ce10666ac0616a47b0042abc07ab7f9057733d2ccd271b1679e3074256091e733eec08744c08d86a079c8e690e887dd4810f4', '0eafdf8b59fbf6a57c007d44f5b8db7a', 'ef6869f3b7bcded95715953b3ca06ac661c92a2bdb3c8395c7be1995a050a35d'],
  [4095, '9a8b7cadde8b0d369bb92d9590769b11', '364fe643099d8cd57d52f27ca0ffc223c8d721840625acb60dd6702a8284b1705f26d6cc065b302a85d55ff3fd189e07e62c25acbe8fdc9d97ab57c7b380ae81', '513342063d0f865ffb74bd6d89040e9e', '5a03defb5f952b54a126c4b583ed5376f63781027fb2188b16a988e2fbbe9c84'],
  [4096, '1401c1da2818b0e96b0c6c61aeea3ece', 'a27d0d8f4ac84787abadba14530dde5fc6eeb36218cb1e72d72e2bb9e834b660085a7e3eb869b43aa81759cd38c9ceaab0639148a7fedbeaed42fec7eb3245a7', '64544d27516c18355e44f3ef23087d16', 'c01e0266151755d5eecb2dfef1792bd253aa0084bff5126a9b416590dc77a41a'],
  [4097, '434cc2a226fdb6e4c8e5d0c99862556a', '197caeb45e0186332f56f57a91cf52c3a650ce3676faaa6d775478e8c93eb7e958c9fda25e60a4412604458cc71899539ff28ea44f9d916e48d81a8f6cff9733', 'da7c93c0c30840db0abc0dd297c47360', '296ae0b99936af1dd1fdacb43c288832bfe8c0801ccecf734a7ab5f9176db3e0'],
  [9000, 'fe7486219f70bc3cbb172a749b9cd56e', '6097a8e7e6494d4f7e2ae5c1a23625636302f2629ff5c5b20b9808c80ebf921a47f591ea53520355d15fbb52f0c7e61b8a2a4ff9af1affe2ec51e97cfd2cbea9', 'b3af1f7d7f3834f5e8a2454a2c3af4b8', 'b782ff0e31b123b1c5dc4c469e3c5ae9e0974da4aa7412773cfcdd355d7fa580'],
]

test('binding tags match protocol/binding.py', () => {
  for (const [n, tag] of VECTORS) assert.equal(bindingTag(key, data(n)), tag, `n=${n}`)
})

test('plain, keyed, salted and personalized BLAKE2b match hashlib', () => {
  const enc = new TextEncoder()
  for (const [n, , plain, keyed, salted] of VECTORS) {
    assert.equal(new Blake2b().update(data(n)).hex(), plain, `plain n=${n}`)
    assert.equal(new Blake2b({ digestSize: 16, key }).update(data(n)).hex(), keyed, `keyed n=${n}`)
    const options = { digestSize: 32, key: key.subarray(0, 20), salt: enc.encode('saltsalt'), person: enc.encode('heserve-bind') }
    assert.equal(new Blake2b(options).update(data(n)).hex(), salted, `salted n=${n}`)
  }
})

test('incremental updates in any split give the same digest', () => {
  const d = data(1000)
  const whole = new Blake2b({ key }).update(d).hex()
  for (const cut of [1, 127, 128, 129, 500, 999]) {
    assert.equal(new Blake2b({ key }).update(d.subarray(0, cut)).update(d.subarray(cut)).hex(), whole)
  }
})

test('hex helpers round-trip', () => {
  const bytes = data(40)
  assert.deepEqual(fromHex(toHex(bytes)), bytes)
  assert.throws(() => fromHex('abc'))
})
