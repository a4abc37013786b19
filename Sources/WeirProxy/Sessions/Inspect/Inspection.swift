// What happens between accept and a protocol session: a listener with use_original_dst hands the
// connection to the listener of its original destination, and a listener with filter chains
// chooses the chain whose session takes it, reading the first bytes first (state `inspecting`)
// when a chain's match depends on them. The bytes read stay queued on flow 0 for the session.
import COpenSSL
import CURing
import WeirConfig
import WeirCore
import WeirHTTP
import WeirRing
#if canImport(Glibc)
import Glibc
#endif

extension Shard {
    /// A connection accepted on listener `li` of the current snapshot.
    func acceptConnection(fd: Int32, listener li: Int) {
        let listener = snapshot.listeners[li]
        guard listener.useOriginalDestination || listener.chains != nil else {
            return listener.proto == .http ? openHTTP(fd: fd, listener: li) : openConnection(fd: fd, listener: li)
        }
        let original = listener.useOriginalDestination || listener.chains?.matchOriginalDestination == true
        guard let destination = destinationKey(fd, original: original) else { ring.close(fd: fd); return }
        var target = li
        if listener.useOriginalDestination, let other = snapshot.handOff(destination, from: li) { target = other }
        guard let c = takeSlot(fd: fd, listener: target) else { return }
        c.pointee.destination = destination
        c.pointee.listenerIndex = Int32(target)
        c.pointee.idleTimeout = snapshot.listeners[target].idleTimeoutNanoseconds
        chooseChainOrStart(c, listener: target)
    }

    /// Starts listener `li`'s session, or (a listener with chains) inspects or picks the chain.
    func chooseChainOrStart(_ c: UnsafeMutablePointer<Connection>, listener li: Int) {
        guard let chains = snapshotOf(c).listeners[li].chains else { return startSession(c, listener: li) }
        if chains.readsFirstBytes(port: c.pointee.destination?.port ?? 0) {
            c.pointee.state = .inspecting
            c.pointee.helloDeadline = chains.inspectTimeoutNanoseconds > 0 ? now + chains.inspectTimeoutNanoseconds : 0
            return armRecv(c, 0)
        }
        c.pointee.state = .connecting
        chainChosen(c, chains, bytes: nil)
    }

    func startSession(_ c: UnsafeMutablePointer<Connection>, listener li: Int) {
        moveListenerSlot(c, to: li)
        if snapshotOf(c).listeners[li].proto == .http { startHTTP(c, listener: li) } else { startTCP(c, listener: li) }
    }

    /// A chain's session counts its connection in its own listener's stats.
    func moveListenerSlot(_ c: UnsafeMutablePointer<Connection>, to li: Int) {
        guard snapshotOf(c) === snapshot else { return }
        let slot = listenerSlots[li]
        guard slot != c.pointee.listenerSlot else { return }
        if c.pointee.listenerSlot >= 0 { control.named.listeners[Int(c.pointee.listenerSlot)].active -= 1 }
        c.pointee.listenerSlot = slot
        control.named.listeners[Int(slot)].accepted += 1
        control.named.listeners[Int(slot)].active += 1
    }

    /// Bytes (or the end) arrived while inspecting: choose once the inspectors know enough.
    func inspectArrived(_ c: UnsafeMutablePointer<Connection>) {
        let li = Int(c.pointee.listenerIndex)
        guard let chains = snapshotOf(c).listeners[li].chains else { return abort(c) }
        let flow = c.flow(0)
        let (tls, http) = chains.inspectors(port: c.pointee.destination?.port ?? 0)
        while true {
            guard flow.pointee.queued > 0 else {
                // Closed before a byte came: nothing to serve.
                if flow.pointee.sourceEnded { abort(c) }
                return
            }
            let bid = Int(flow.pointee.head)
            let len = Int(bufferLength[bid])
            let buf = UnsafeRawBufferPointer(start: bufferPointer(bid), count: len)
            let full = len >= buffers.bufferBytes || flow.pointee.sourceEnded
            if tls, case .incomplete = ClientHello.parse(buf, limit: buffers.bufferBytes) {
                if flow.pointee.queued > 1 && compact(flow) { continue }
                if !full { return }
            }
            if http && !(tls && buf.first == 0x16), case .incomplete = HTTPSniffer.sniff(buf, limit: buffers.bufferBytes) {
                if flow.pointee.queued > 1 && compact(flow) { continue }
                if !full { return }
            }
            c.pointee.helloDeadline = 0
            return chainChosen(c, chains, bytes: buf)
        }
    }

    /// The inspectors ran out of time: close, or choose with what is known.
    func inspectTimedOut(_ c: UnsafeMutablePointer<Connection>) {
        let li = Int(c.pointee.listenerIndex)
        guard let chains = snapshotOf(c).listeners[li].chains, chains.continueOnTimeout else {
            control.stats.pointee.inspectTimeouts += 1
            return abort(c)
        }
        c.pointee.helloDeadline = 0
        let flow = c.flow(0)
        let buf = flow.pointee.queued > 0
            ? UnsafeRawBufferPointer(start: bufferPointer(Int(flow.pointee.head)), count: Int(bufferLength[Int(flow.pointee.head)])) : nil
        chainChosen(c, chains, bytes: buf)
    }

    /// Picks the chain from the connection's addresses and what the inspectors found in `bytes`
    /// (the head of flow 0, or nil), then starts that chain's session.
    func chainChosen(_ c: UnsafeMutablePointer<Connection>, _ chains: FilterChains, bytes: UnsafeRawBufferPointer?) {
        let fd = c.pointee.downstreamFD
        // A connection whose addresses cannot be read (reset already) is closed: choosing with
        // a stand-in address could give it a chain meant for other sources.
        var storage = sockaddr_storage()
        guard let destination = c.pointee.destination, ring.peerName(fd: fd, into: &storage) == 0,
              let source = withUnsafePointer(to: &storage, { AddressKey(storage: $0) }) else { return abort(c) }
        var facts = ConnectionFacts(destination: destination, source: source)
        let (tls, http) = chains.inspectors(port: destination.port)
        if let buf = bytes {
            if tls, case .hello(let name, let alpn) = ClientHello.parse(buf, limit: buffers.bufferBytes) {
                facts.isTLS = true
                if let name { facts.serverName = UnsafeRawBufferPointer(rebasing: buf[Int(name.start)..<Int(name.end)]) }
                if let alpn { facts.alpn = UnsafeRawBufferPointer(rebasing: buf[Int(alpn.start)..<Int(alpn.end)]) }
            } else if http {
                facts.alpn = HTTPSniffer.sniff(buf, limit: buffers.bufferBytes).alpn
            }
        }
        let chain = chains.select(facts)
        guard let target = chain.map({ chains.targets[$0] }) ?? chains.defaultTarget, target >= 0 else {
            if let i = chain, chains.targets[i] < 0 { control.stats.pointee.chainRefused += 1 } else { control.stats.pointee.chainUnmatched += 1 }
            return abort(c)
        }
        c.pointee.listenerIndex = Int32(target)
        startSession(c, listener: target)
    }

    /// The address a client reached, or (`original`, and redirected by NAT) where it was going.
    /// Read from the kernel; no heap.
    func destinationKey(_ fd: Int32, original: Bool) -> AddressKey? {
        var storage = sockaddr_storage()
        return destinationKey(fd, original: original, into: &storage)
    }

    /// The same, with the sockaddr the kernel filled left in `storage`.
    func destinationKey(_ fd: Int32, original: Bool, into storage: inout sockaddr_storage) -> AddressKey? {
        guard (original && ring.originalDestination(fd: fd, into: &storage) == 0) || ring.localName(fd: fd, into: &storage) == 0 else { return nil }
        return withUnsafePointer(to: &storage) { AddressKey(storage: $0) }
    }

    /// Writes the client's original destination into `storage` and returns its family; nil
    /// (counted) when there is none, or when it is one of Weir's own bound listeners (without a
    /// NAT redirect the destination is the listener itself, and connecting to it would loop).
    func originalDestination(_ c: UnsafeMutablePointer<Connection>, into storage: inout sockaddr_storage) -> SocketAddress.Family? {
        guard let key = destinationKey(c.pointee.downstreamFD, original: true, into: &storage) else { return nil }
        let snap = snapshotOf(c)
        if let li = snap.listenerByAddress[key] ?? snap.listenerByAddress[key.anyAddress], snap.listeners[li].bindToPort {
            control.stats.pointee.originalDestinationLoops += 1
            return nil
        }
        return Int32(storage.ss_family) == AF_INET6 ? .inet6 : .inet
    }

    /// Binds an upstream socket to a cluster's source address (upstream_bind_config).
    func bindSource(_ fd: Int32, _ source: SocketAddress) -> Bool {
        var storage = sockaddr_storage()
        let length = source.fill(&storage)
        let rc = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { ring.bindSource(fd: fd, address: $0, length: length) } }
        if rc != 0 {
            control.stats.pointee.sourceBindFailures += 1
            if bindWarned.insert(source).inserted {
                Log.warning("shard \(index): cannot bind an upstream socket to \(source): \(String(cString: strerror(-rc))) (logged once; weir_source_bind_failures_total counts them)")
            }
        }
        return rc == 0
    }

    /// A chain that terminates TLS starts after its ClientHello was read: the ciphertext queued
    /// on flow 0 goes through OpenSSL now, plaintext queued in its place. False when the
    /// connection failed (it is closed, or closing).
    func decryptQueued(_ c: UnsafeMutablePointer<Connection>) -> Bool {
        let flow = c.flow(0)
        var bid = Int(flow.pointee.head)
        precondition(flow.pointee.sendOffset == 0, "inspected bytes are never consumed")
        flow.pointee.head = -1
        flow.pointee.tail = -1
        flow.pointee.queued = 0
        while bid >= 0 {
            let next = Int(bufferNext[bid])
            bufferNext[bid] = -1
            var closeNotify = false
            guard tlsReceive(c, bid: bid, count: Int(bufferLength[bid]), closeNotify: &closeNotify) != nil else {
                // The buffers not yet fed are this function's to free.
                var rest = next
                while rest >= 0 { let n = Int(bufferNext[rest]); bufferNext[rest] = -1; releaseBuffer(rest); rest = n }
                return false
            }
            if closeNotify { flow.pointee.sourceEnded = true }
            bid = next
        }
        return true
    }
}
